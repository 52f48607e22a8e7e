//! User authentication: a bearer JWT verified against a JWKS (RS256/ES256) or
//! a shared HS256 secret; `sub` is the user. Expiry, issuer and audience are
//! enforced; `alg: none` and algorithm confusion are refused by construction
//! (each key source allows only its own algorithms).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <user JWT>`")]
    Missing,
    #[error("invalid user token: {0}")]
    Invalid(String),
    #[error("the key set at {0} is unavailable; try again shortly")]
    KeysUnavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("no way to verify user tokens: set BERTH_AUTH_JWKS_URL (RS256/ES256) or BERTH_AUTH_HS256_SECRET")]
    None,
    #[error("set only one of BERTH_AUTH_JWKS_URL and BERTH_AUTH_HS256_SECRET")]
    Both,
    #[error("BERTH_AUTH_HS256_SECRET is too short ({0} bytes); use at least 32 random bytes")]
    WeakSecret(usize),
    #[error("environment {environment:?} checks no {missing} of user tokens: set BERTH_AUTH_ISSUER and BERTH_AUTH_AUDIENCE to what your identity provider puts in its tokens (only development environments, BERTH_ENV=dev or dev-*, may leave them unset)")]
    UncheckedClaims {
        environment: String,
        missing: &'static str,
    },
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Everything else the token says (an operator role claim among it).
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// A verified token: its subject and its other claims.
#[derive(Debug)]
pub struct Verified {
    pub subject: String,
    /// Its `exp` (unix seconds).
    pub expires: Option<u64>,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl Verified {
    /// Whether claim `name` is `value`, or a list holding it (identity
    /// providers put roles in either shape).
    pub fn has_claim(&self, name: &str, value: &str) -> bool {
        match self.claims.get(name) {
            Some(serde_json::Value::String(s)) => s == value,
            Some(serde_json::Value::Array(items)) => {
                items.iter().any(|i| i.as_str() == Some(value))
            }
            _ => false,
        }
    }
}

/// Refetch the key set at most this often when a token names an unknown key.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(30);
const JWKS_TTL: Duration = Duration::from_secs(600);

enum Keys {
    Hs256(DecodingKey),
    Jwks {
        url: String,
        http: reqwest::Client,
        cache: RwLock<JwksCache>,
    },
}

/// After a failed fetch, the next waits this long, doubling per failure up to
/// the maximum: a key-set server that is down must not be hammered by every
/// request (each under the write lock), nor make every request wait on it.
const JWKS_RETRY_MIN: Duration = Duration::from_secs(1);
const JWKS_RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
    /// The last failed fetch and how many failed in a row.
    failed: Option<(Instant, u32)>,
}

impl JwksCache {
    fn may_fetch(&self) -> bool {
        if let Some((at, failures)) = self.failed {
            let wait = JWKS_RETRY_MIN
                .saturating_mul(1 << failures.saturating_sub(1).min(6))
                .min(JWKS_RETRY_MAX);
            return at.elapsed() >= wait;
        }
        self.fetched.is_none_or(|t| t.elapsed() >= JWKS_REFRESH_MIN)
    }
}

pub struct Authenticator {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
}

// Keys are secrets (HS256) or noise: Debug shows only the source.
impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.keys {
            Keys::Hs256(_) => "hs256-secret".to_owned(),
            Keys::Jwks { url, .. } => format!("jwks {url}"),
        };
        f.debug_struct("Authenticator")
            .field("keys", &source)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Self, AuthConfigError> {
        // A token minted for another application of the same identity
        // provider must not open sessions here.
        let missing = match (&config.auth_issuer, &config.auth_audience) {
            (None, None) => Some("issuer and audience"),
            (None, Some(_)) => Some("issuer"),
            (Some(_), None) => Some("audience"),
            (Some(_), Some(_)) => None,
        };
        if let Some(missing) = missing {
            if !berth_common::config::is_development(&config.common.environment) {
                return Err(AuthConfigError::UncheckedClaims {
                    environment: config.common.environment.clone(),
                    missing,
                });
            }
        }
        let keys = match (&config.auth_jwks_url, &config.auth_hs256_secret) {
            (None, None) => return Err(AuthConfigError::None),
            (Some(_), Some(_)) => return Err(AuthConfigError::Both),
            (None, Some(secret)) if secret.len() < 32 => {
                return Err(AuthConfigError::WeakSecret(secret.len()))
            }
            (None, Some(secret)) => Keys::Hs256(DecodingKey::from_secret(secret.as_bytes())),
            (Some(url), None) => Keys::Jwks {
                url: url.clone(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
                cache: RwLock::new(JwksCache::default()),
            },
        };
        Ok(Self {
            keys,
            issuer: config.auth_issuer.clone(),
            audience: config.auth_audience.clone(),
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }

    /// The user id (`sub`) of a valid token.
    pub async fn user(&self, token: &str) -> Result<String, AuthError> {
        self.verify(token).await.map(|v| v.subject)
    }

    /// A valid token's subject and claims.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (key, alg) = match &self.keys {
            Keys::Hs256(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(AuthError::Invalid(format!(
                        "algorithm {:?} is not accepted; use HS256",
                        header.alg
                    )));
                }
                (key.clone(), Algorithm::HS256)
            }
            Keys::Jwks { .. } => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(AuthError::Invalid(format!(
                        "algorithm {:?} is not accepted; use RS256 or ES256",
                        header.alg
                    )));
                }
                let kid = header
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
                let (key, alg) = self.jwk(&kid).await?;
                if alg != header.alg {
                    return Err(AuthError::Invalid(
                        "the token's algorithm does not match its key".into(),
                    ));
                }
                (key, alg)
            }
        };
        let data = decode::<Claims>(token, &key, &self.validation(alg))
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(AuthError::Invalid("sub must be 1 to 256 characters".into()));
        }
        if crate::assign::has_control_characters(&data.claims.sub) {
            return Err(AuthError::Invalid(
                "sub must not contain control characters".into(),
            ));
        }
        Ok(Verified {
            subject: data.claims.sub,
            expires: data.claims.rest.get("exp").and_then(|v| v.as_u64()),
            claims: data.claims.rest,
        })
    }

    async fn jwk(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        let Keys::Jwks { url, http, cache } = &self.keys else {
            return Err(AuthError::Invalid("no key set configured".into()));
        };
        {
            let cache = cache.read().await;
            let fresh = cache.fetched.is_some_and(|t| t.elapsed() < JWKS_TTL);
            if let (Some(found), true) = (cache.keys.get(kid), fresh) {
                return Ok(found.clone());
            }
        }
        let mut cache = cache.write().await;
        if cache.may_fetch() {
            match fetch_jwks(http, url).await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                    cache.failed = None;
                }
                Err(e) => {
                    let failures = cache.failed.map_or(0, |(_, n)| n) + 1;
                    cache.failed = Some((Instant::now(), failures));
                    if cache.keys.is_empty() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, failures, "refreshing the JWKS failed; using cached keys")
                }
            }
        } else if cache.keys.is_empty() {
            return Err(AuthError::KeysUnavailable(url.clone()));
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("unknown signing key {kid:?}")))
    }
}

async fn fetch_jwks(
    http: &reqwest::Client,
    url: &str,
) -> Result<HashMap<String, (DecodingKey, Algorithm)>, AuthError> {
    let unavailable = |_| AuthError::KeysUnavailable(url.to_owned());
    let set: JwkSet = http
        .get(url)
        .send()
        .await
        .map_err(unavailable)?
        .error_for_status()
        .map_err(unavailable)?
        .json()
        .await
        .map_err(unavailable)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) else {
            continue;
        };
        let alg = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        keys.insert(kid, (key, alg));
    }
    Ok(keys)
}
