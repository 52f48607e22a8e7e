//! Host identity: one-use bootstrap tokens (per launch, or per host started
//! by hand) and registration, which spends one for a host credential.

use std::sync::Arc;

use berth_common::auth::{new_session_token, token_sha256_hex};
use berth_common::host_api::{RegisterRequest, RegisterResponse};
use berth_common::http::{bearer, json, ApiError, HttpResponse};
use berth_common::{HostId, HostStatus};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::{conflict, database_error};
use crate::audit::{ActorKind, Entry, Outcome};
use crate::scaler::Scaler;

/// Records `sha256` as `launch`'s bootstrap token, valid for `valid_secs`:
/// the token itself goes into the instances' user data, and registers each
/// instance of the launch once.
pub(crate) async fn arm_launch<'e>(
    db: impl PgExecutor<'e>,
    launch: Uuid,
    sha256: &str,
    valid_secs: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE launches SET bootstrap_sha256 = $2, \
                bootstrap_expires_at = now() + make_interval(secs => $3) WHERE id = $1",
    )
    .bind(launch)
    .bind(sha256)
    .bind(valid_secs as f64)
    .execute(db)
    .await?;
    Ok(())
}

/// A host started by hand: what its row says it is.
#[derive(Debug, Clone)]
pub struct HandStartedHost {
    pub id: HostId,
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub capacity: i32,
}

/// Creates (or re-arms) the PRE_CONNECTION row of a host started by hand and
/// returns its bootstrap token, valid for `valid_secs`. A host that already
/// registered keeps its credential until it registers with the new token.
pub async fn issue_for_host(
    db: &sqlx::PgPool,
    host: &HandStartedHost,
    valid_secs: u64,
) -> Result<String, IssueError> {
    let token = new_session_token();
    let armed: Option<String> = sqlx::query_scalar(
        "INSERT INTO hosts (id, region, image_id, instance_type, capacity, free_slots, status, \
                            bootstrap_sha256, bootstrap_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $5, 'PRE_CONNECTION', $6, now() + make_interval(secs => $7)) \
         ON CONFLICT (id) DO UPDATE SET bootstrap_sha256 = EXCLUDED.bootstrap_sha256, \
                bootstrap_expires_at = EXCLUDED.bootstrap_expires_at, credential_sha256 = NULL \
         WHERE hosts.status NOT IN ('TERMINATING', 'TERMINATED') \
           AND hosts.region = EXCLUDED.region AND hosts.image_id = EXCLUDED.image_id \
           AND hosts.instance_type = EXCLUDED.instance_type \
         RETURNING id",
    )
    .bind(&host.id)
    .bind(&host.region)
    .bind(&host.image_id)
    .bind(&host.instance_type)
    .bind(host.capacity)
    .bind(&token.sha256_hex)
    .bind(valid_secs as f64)
    .fetch_optional(db)
    .await
    .map_err(IssueError::Db)?;
    match armed {
        Some(_) => Ok(token.token),
        None => Err(IssueError::Conflict(host.id.clone())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("host {0} exists with another region, image or instance type, or has ended; pick another host id or remove its row")]
    Conflict(HostId),
    #[error(
        "writing the host row failed: {0}; check DATABASE_URL and that the schema is migrated"
    )]
    Db(#[source] sqlx::Error),
}

#[derive(sqlx::FromRow)]
struct Row {
    region: String,
    image_id: String,
    instance_type: String,
    status: HostStatus,
    capacity: i32,
    credential_sha256: Option<String>,
    bootstrap_ok: bool,
}

/// A registration's new host credential.
enum Credential {
    /// The host made it and sent its hash (it already holds the credential).
    Host(String),
    /// Made here: answered once.
    Made(berth_common::auth::NewSessionToken),
}

impl Credential {
    fn sha256_hex(&self) -> String {
        match self {
            Credential::Host(sha256_hex) => sha256_hex.clone(),
            Credential::Made(made) => made.sha256_hex.clone(),
        }
    }
}

fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn refused(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "REGISTRATION_REFUSED", message)
}

/// `POST /v1/host/register`. Holds the row locked while it checks and moves
/// it, so a drain racing the registration is not lost.
pub(crate) async fn register(
    scaler: &Arc<Scaler>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "NOT_A_HOST",
            "registration needs the launch's bootstrap token or the host credential (Authorization: Bearer …)",
        )
    })?;
    let address = berth_common::http::peer_address(&req);
    let me: RegisterRequest = super::body(req).await?;
    // Deserializing it checked its form.
    let host = me.host_id.clone();
    if !is_sha256_hex(&me.cert_sha256) {
        return Err(ApiError::bad_request(
            "cert_sha256 must be the certificate's SHA-256 as 64 lowercase hex digits",
        ));
    }
    if me.api_port == 0 {
        return Err(ApiError::bad_request("api_port must be 1-65535"));
    }
    if me
        .credential_sha256
        .as_deref()
        .is_some_and(|h| !is_sha256_hex(h))
    {
        return Err(ApiError::bad_request(
            "credential_sha256 must be a SHA-256 as 64 lowercase hex digits",
        ));
    }
    let result = async {
        let presented = token_sha256_hex(&token);
        let failed = |e| database_error("the registration", e);
        let mut tx = scaler.db.begin().await.map_err(failed)?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT h.region, h.image_id, h.instance_type, h.status, h.capacity, h.credential_sha256, \
                    coalesce((h.bootstrap_sha256 = $2 AND h.bootstrap_expires_at > now()) \
                          OR (l.bootstrap_sha256 = $2 AND l.bootstrap_expires_at > now()), false) AS bootstrap_ok \
             FROM hosts h LEFT JOIN launches l ON l.id = h.launch_id WHERE h.id = $1 FOR UPDATE OF h",
        )
        .bind(&host)
        .bind(&presented)
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed)?;
        let Some(row) = row else {
            // RunInstances may have answered moments ago and the instances not be
            // recorded yet: a live launch token means "ask again".
            let launching: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM launches WHERE bootstrap_sha256 = $1 AND bootstrap_expires_at > now())",
            )
            .bind(&presented)
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
            return Err(if launching {
                conflict(
                    "HOST_NOT_RECORDED",
                    format!("host {host}'s launch is not recorded yet; retry in a few seconds"),
                )
            } else {
                refused("no host with that id was launched with this token")
            });
        };
        // The host's own credential (its hash sent with the bootstrap token), or
        // one made here and answered once.
        let new_credential = if row.credential_sha256.as_deref() == Some(presented.as_str()) {
            None
        } else if row.credential_sha256.is_none() && row.bootstrap_ok {
            Some(match &me.credential_sha256 {
                Some(sha256_hex) => Credential::Host(sha256_hex.clone()),
                None => Credential::Made(new_session_token()),
            })
        } else {
            return Err(refused(
                "the token is not this host's credential, and not an unused, unexpired bootstrap token for it; \
                 an operator can issue a new one (scaling-service host-token)",
            ));
        };
        for (field, expected, actual) in [
            ("region", &row.region, &me.region),
            ("image_id", &row.image_id, &me.image_id),
            ("instance_type", &row.instance_type, &me.instance_type),
        ] {
            if expected != actual {
                return Err(conflict(
                    "HOST_MISMATCH",
                    format!("host {host} was launched with {field} {expected:?} but reports {actual:?}; refusing a mismatched host"),
                ));
            }
        }
        if matches!(row.status, HostStatus::Terminating | HostStatus::Terminated) {
            return Err(ApiError::new(
                StatusCode::GONE,
                "HOST_ENDED",
                format!("host {host} is {}; it can no longer register", row.status),
            ));
        }
        // A host told to drain before it came up keeps draining; ACTIVE again is
        // a restart of the daemon on a live host.
        let status: HostStatus = sqlx::query_scalar(
            "UPDATE hosts SET \
                    status = CASE WHEN status = 'DRAINING' THEN status ELSE 'ACTIVE' END, \
                    status_reason = CASE WHEN status = 'DRAINING' THEN status_reason END, \
                    public_ip = $2::inet, private_ip = $3::inet, api_port = $4, cert_sha256 = $5, host_version = $6, \
                    credential_sha256 = coalesce($7, credential_sha256), \
                    bootstrap_sha256 = NULL, bootstrap_expires_at = NULL, \
                    registered_at = coalesce(registered_at, now()), last_heartbeat_at = now(), gpus = $8 \
             WHERE id = $1 RETURNING status",
        )
        .bind(&host)
        .bind(me.public_ip.map(|ip| ip.to_string()))
        .bind(me.private_ip.map(|ip| ip.to_string()))
        .bind(i32::from(me.api_port))
        .bind(&me.cert_sha256)
        .bind(&me.version)
        .bind(new_credential.as_ref().map(Credential::sha256_hex))
        .bind(i32::try_from(me.gpus.len()).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(%host, %status, first = new_credential.is_some(), "host registered");
        let answer = RegisterResponse {
            status,
            capacity: row.capacity,
            credential: match new_credential {
                Some(Credential::Made(made)) => Some(made.token),
                _ => None,
            },
            grant_key: Some(scaler.keys.grants.public_key()),
        };
        Ok(json(
            StatusCode::OK,
            &serde_json::to_value(answer).unwrap_or_default(),
        ))
    }
    .await;
    // Registrations and refused ones (a wrong, used or expired token, a
    // mismatched or ended host) go to the audit trail.
    let outcome = match &result {
        Ok(_) => Some((Outcome::Ok, serde_json::json!({}))),
        Err(e)
            if matches!(e.status, StatusCode::FORBIDDEN | StatusCode::GONE)
                || e.code == "HOST_MISMATCH" =>
        {
            Some((Outcome::Refused, serde_json::json!({"code": e.code})))
        }
        Err(_) => None,
    };
    if let Some((outcome, detail)) = outcome {
        scaler.audit.record(
            Entry::new(
                ActorKind::Host,
                &host.to_string(),
                "host.register",
                &host.to_string(),
            )
            .region(&me.region)
            .address(address)
            .outcome(outcome)
            .detail(detail),
        );
    }
    result
}
