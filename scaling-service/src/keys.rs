//! Keys every control-plane replica shares, kept in the database so any
//! replica (and any restart) signs what the others verify: the Ed25519 key of
//! hosts' access grants and the HMAC key of the gateway's login cookies. The
//! first replica to start makes each; the rest read it.

use berth_common::grant::{GrantKeyError, GrantSigner};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::PgPool;

const GRANTS: &str = "grants";
const GATEWAY_COOKIES: &str = "gateway_cookies";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or storing the control plane's shared keys: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the control plane's stored grant key: {0}; delete the `grants` row of control_keys to make a new one (hosts learn it when they next register)")]
    Grant(#[from] GrantKeyError),
    #[error("the system random number generator failed")]
    Random,
}

pub struct ControlKeys {
    pub grants: GrantSigner,
    pub cookies: hmac::Key,
}

impl std::fmt::Debug for ControlKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlKeys")
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

impl ControlKeys {
    pub async fn load_or_create(db: &PgPool) -> Result<Self, KeyError> {
        let grants = load_or_create(db, GRANTS, GrantSigner::generate_pkcs8).await?;
        let cookies = load_or_create(db, GATEWAY_COOKIES, || {
            let mut key = vec![0u8; 32];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| KeyError::Random)?;
            Ok::<_, KeyError>(key)
        })
        .await?;
        Ok(Self {
            grants: GrantSigner::from_pkcs8(&grants)?,
            cookies: hmac::Key::new(hmac::HMAC_SHA256, &cookies),
        })
    }
}

/// The stored secret `name`, made with `make` if no replica made it yet.
async fn load_or_create<E>(
    db: &PgPool,
    name: &str,
    make: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, KeyError>
where
    KeyError: From<E>,
{
    let existing: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT secret FROM control_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(db)
            .await?;
    if let Some(secret) = existing {
        return Ok(secret);
    }
    // Two replicas starting together: one insert wins, both read the winner.
    sqlx::query(
        "INSERT INTO control_keys (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(make()?)
    .execute(db)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT secret FROM control_keys WHERE name = $1")
            .bind(name)
            .fetch_one(db)
            .await?,
    )
}
