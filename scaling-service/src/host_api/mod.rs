//! The host API (`/v1/host/…`): the only way hosts reach the fleet's state.
//! A host registers once with the bootstrap token its launch gave it and
//! from then on presents its host credential; every call acts only on that
//! host's row and that host's sessions, and only along the state machine.
//! Desired state is pushed down `GET /v1/host/watch`; everything a host
//! reports is an idempotent call backed by one guarded statement.

pub(crate) mod credentials;
pub(crate) mod heartbeats;
pub(crate) mod hub;
pub mod identity;
mod reports;
pub(crate) mod watch;

use std::sync::Arc;
use std::time::Duration;

use berth_common::auth::token_sha256_hex;
use berth_common::host_api::HostState;
use berth_common::http::{bearer, read_body, streaming, ApiError, HttpResponse, StreamingBody};
use berth_common::{HostId, HostStatus};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::scaler::Scaler;

const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// Host reports are small; a session's port list is the largest.
const BODY_LIMIT: usize = 64 * 1024;

/// The host a credential belongs to, and its row's state if the credential
/// check read it.
#[derive(Debug, Clone)]
pub(crate) struct CallingHost {
    pub id: HostId,
    checked_state: Option<HostState>,
}

impl CallingHost {
    /// The host row's state: as the credential check read it, or read now.
    pub(crate) async fn state(&self, scaler: &Scaler) -> Result<HostState, ApiError> {
        if let Some(state) = &self.checked_state {
            return Ok(state.clone());
        }
        host_state(&scaler.db, &self.id)
            .await
            .map_err(|e| database_error("reading the host's state", e))?
            .ok_or_else(not_a_host)
    }
}

/// A host row's state, as its calls are answered and its snapshot opens.
pub(crate) async fn host_state(
    db: &sqlx::PgPool,
    host: &HostId,
) -> Result<Option<HostState>, sqlx::Error> {
    sqlx::query_as("SELECT status, free_slots FROM hosts WHERE id = $1")
        .bind(host)
        .fetch_optional(db)
        .await
}

/// Routes `/v1/host/<rest>`.
pub(crate) async fn handle(
    scaler: &Arc<Scaler>,
    req: Request<Incoming>,
    rest: &[&str],
) -> Result<Response<StreamingBody>, ApiError> {
    let full = |r: Result<HttpResponse, ApiError>| r.map(streaming);
    match (req.method().clone(), rest) {
        (Method::POST, ["register"]) => full(identity::register(scaler, req).await),
        (Method::GET, ["watch"]) => {
            let host = authenticate(scaler, &req).await?;
            watch::stream(scaler, host).await
        }
        (method, rest) => {
            let host = authenticate(scaler, &req).await?;
            full(reports::handle(scaler, &host, method, rest, req).await)
        }
    }
}

/// The calling host, from its credential: 401 without one or with one no
/// host holds. A credential this replica checked recently is not read again.
pub(crate) async fn authenticate(
    scaler: &Scaler,
    req: &Request<Incoming>,
) -> Result<CallingHost, ApiError> {
    let credential = bearer(req).map_err(|_| not_a_host())?;
    let sha256_hex = token_sha256_hex(&credential);
    let epoch = match scaler.credentials.host_of(&sha256_hex) {
        Ok(id) => {
            return Ok(CallingHost {
                id,
                checked_state: None,
            })
        }
        Err(epoch) => epoch,
    };
    let found: Option<(HostId, HostStatus, i32)> =
        sqlx::query_as("SELECT id, status, free_slots FROM hosts WHERE credential_sha256 = $1")
            .bind(&sha256_hex)
            .fetch_optional(&scaler.db)
            .await
            .map_err(|e| database_error("checking a host credential", e))?;
    let (id, status, free_slots) = found.ok_or_else(not_a_host)?;
    scaler.credentials.remember(sha256_hex, id.clone(), epoch);
    Ok(CallingHost {
        id,
        checked_state: Some(HostState { status, free_slots }),
    })
}

fn not_a_host() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "NOT_A_HOST",
        "the host API needs the host credential that registration returned (Authorization: Bearer …)",
    )
}

/// The database's words stay in the log; the host is told to retry.
pub(crate) fn database_error(doing: &'static str, error: sqlx::Error) -> ApiError {
    tracing::error!(%error, doing, "host API database call failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        format!("the control plane could not finish {doing} just now; retry"),
    )
}

/// A JSON body of type `T`, or a 400 that says what was expected.
pub(crate) async fn body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes: Bytes = read_body(req, BODY_LIMIT, BODY_TIMEOUT).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed body: {e}; see /openapi.json for the host API"
        ))
    })
}

/// 409 with a code: the call is well formed but the row is not in a state
/// that allows it (a retried report whose work is done gets 200 instead).
pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}
