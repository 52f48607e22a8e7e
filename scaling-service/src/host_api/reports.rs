//! What a host reports and asks about its own row and sessions. Each call is
//! one guarded statement scoped to the calling host: a retried report finds
//! its work done and answers the same, and no call reaches another host's
//! rows or moves a session off its state machine.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use berth_common::host_api::{
    ClaimRequest, DeathNotice, DrainRequest, DrainResponse, Dying, EndNotice, Heartbeat, HostState,
    LoginReport, Running, RuntimeRow, SealedInit, SessionIds, SessionState, WarmSession,
};
use berth_common::http::{json, ApiError, HttpResponse};
use berth_common::{SessionId, SessionStatus};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::{body, conflict, database_error, CallingHost};
use crate::audit::{ActorKind, Entry, Outcome};
use crate::scaler::Scaler;

fn ok(value: impl Serialize) -> Result<HttpResponse, ApiError> {
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(value).unwrap_or_default(),
    ))
}

/// Reasons a host gives are kept to this many characters.
const REASON_CHARS: usize = 2000;

fn bounded(reason: &str) -> String {
    reason.chars().take(REASON_CHARS).collect()
}

fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("{raw:?} is not a session id (a UUID)")))
}

fn not_yours() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NO_SUCH_SESSION",
        "this host has no session with that id",
    )
}

pub(super) async fn handle(
    scaler: &Arc<Scaler>,
    host: &CallingHost,
    method: Method,
    rest: &[&str],
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    match (method, rest) {
        (Method::POST, ["heartbeat"]) => heartbeat(scaler, host, body(req).await?).await,
        (Method::GET, ["status"]) => ok(host.state(scaler).await?),
        (Method::POST, ["drain"]) => drain(scaler, host, body(req).await?).await,
        (Method::POST, ["terminating"]) => terminating(scaler, host).await,
        (Method::POST, ["death"]) => death(scaler, host, body(req).await?).await,
        (Method::GET, ["runtimes", name]) => runtime(scaler, name).await,
        (Method::GET, ["sessions"]) => sessions(scaler, host).await,
        (Method::POST, ["sessions"]) => warm_created(scaler, host, body(req).await?).await,
        (Method::POST, ["sessions", "retire"]) => retire(scaler, host, body(req).await?).await,
        (Method::GET, ["sessions", id]) => session(scaler, host, session_id(id)?).await,
        (Method::DELETE, ["sessions", id]) => ended(scaler, host, session_id(id)?).await,
        (Method::POST, ["sessions", id, "claim"]) => {
            claim(scaler, host, session_id(id)?, body(req).await?).await
        }
        (Method::POST, ["sessions", id, "running"]) => {
            running(scaler, host, session_id(id)?, body(req).await?).await
        }
        (Method::POST, ["sessions", id, "dying"]) => {
            dying(scaler, host, session_id(id)?, body(req).await?).await
        }
        (Method::GET, ["sessions", id, "init"]) => init(scaler, host, session_id(id)?).await,
        (Method::POST, ["sessions", id, "warning"]) => {
            warning(scaler, host, session_id(id)?, body(req).await?).await
        }
        (Method::POST, ["sessions", id, "login"]) => {
            login(scaler, host, session_id(id)?, body(req).await?).await
        }
        (_, ["heartbeat" | "drain" | "terminating" | "death"]) => {
            Err(ApiError::method_not_allowed("POST"))
        }
        (_, ["status" | "watch"] | ["runtimes", _] | ["sessions", _, "init"]) => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (_, ["sessions"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (
            _,
            ["sessions", "retire"]
            | ["sessions", _, "claim" | "running" | "dying" | "warning" | "login"],
        ) => Err(ApiError::method_not_allowed("POST")),
        (_, ["sessions", _]) => Err(ApiError::method_not_allowed("GET, DELETE")),
        _ => Err(ApiError::not_found()),
    }
}

/// Recorded in the next batch (one statement for every host that beat
/// meanwhile); answered with the row's state.
async fn heartbeat(
    scaler: &Scaler,
    host: &CallingHost,
    beat: Heartbeat,
) -> Result<HttpResponse, ApiError> {
    scaler
        .heartbeats
        .record(host.id.clone(), beat.load_average, beat.session_count);
    ok(host.state(scaler).await?)
}

async fn drain(
    scaler: &Scaler,
    host: &CallingHost,
    request: DrainRequest,
) -> Result<HttpResponse, ApiError> {
    let moved = sqlx::query(
        "UPDATE hosts SET status = 'DRAINING', status_reason = $2, draining_since = coalesce(draining_since, now()) \
         WHERE id = $1 AND status IN ('LAUNCHING', 'PRE_CONNECTION', 'ACTIVE')",
    )
    .bind(&host.id)
    .bind(&request.reason)
    .execute(&scaler.db)
    .await
    .map_err(|e| database_error("marking the host DRAINING", e))?;
    ok(DrainResponse {
        moved: moved.rows_affected() == 1,
    })
}

/// A drained host hands itself to the scaler for termination.
async fn terminating(scaler: &Scaler, host: &CallingHost) -> Result<HttpResponse, ApiError> {
    let moved: Option<HostState> = sqlx::query_as(
        "UPDATE hosts SET status = 'TERMINATING' WHERE id = $1 AND status = 'DRAINING' \
         RETURNING status, free_slots",
    )
    .bind(&host.id)
    .fetch_optional(&scaler.db)
    .await
    .map_err(|e| database_error("marking the host TERMINATING", e))?;
    match moved {
        Some(state) => ok(state),
        None => ok(host.state(scaler).await?),
    }
}

async fn death(
    scaler: &Scaler,
    host: &CallingHost,
    notice: DeathNotice,
) -> Result<HttpResponse, ApiError> {
    let reason = bounded(&notice.reason);
    sqlx::query("UPDATE hosts SET status_reason = $2 WHERE id = $1")
        .bind(&host.id)
        .bind(format!("host-service died: {reason}"))
        .execute(&scaler.db)
        .await
        .map_err(|e| database_error("recording the death notice", e))?;
    ok(serde_json::json!({}))
}

/// Any runtime may be read (a host runs the one it was configured with);
/// none may be changed.
async fn runtime(scaler: &Scaler, name: &str) -> Result<HttpResponse, ApiError> {
    let row: RuntimeRow = sqlx::query_as(
        "SELECT name, image, ports, env, memory_mib, cpu_shares, shm_mib, needs_tty, needs_uinput, \
                readiness, ready_timeout_s, idle_timeout_s, max_lifetime_s, idle_warning_s, init, user_volume, egress, \
                gpus, gpu_driver FROM runtimes WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&scaler.db)
    .await
    .map_err(|e| database_error("reading a runtime", e))?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "UNKNOWN_RUNTIME",
            format!("no runtime named {name:?}; check the host's --runtime"),
        )
    })?;
    ok(row)
}

/// The host's sessions as the database has them.
pub(crate) async fn session_states(
    db: &sqlx::PgPool,
    host: &berth_common::HostId,
) -> Result<Vec<SessionState>, sqlx::Error> {
    sqlx::query_as("SELECT id, status, user_id, token_sha256 FROM sessions WHERE host_id = $1")
        .bind(host)
        .fetch_all(db)
        .await
}

async fn sessions(scaler: &Scaler, host: &CallingHost) -> Result<HttpResponse, ApiError> {
    let states = session_states(&scaler.db, &host.id)
        .await
        .map_err(|e| database_error("reading the host's sessions", e))?;
    ok(states)
}

async fn session(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
) -> Result<HttpResponse, ApiError> {
    let state: Option<SessionState> = sqlx::query_as(
        "SELECT id, status, user_id, token_sha256 FROM sessions WHERE id = $1 AND host_id = $2",
    )
    .bind(id)
    .bind(&host.id)
    .fetch_optional(&scaler.db)
    .await
    .map_err(|e| database_error("reading a session", e))?;
    ok(state.ok_or_else(not_yours)?)
}

/// A warm session the host made. Retried, it changes nothing; a session id
/// another host holds is refused.
async fn warm_created(
    scaler: &Scaler,
    host: &CallingHost,
    warm: WarmSession,
) -> Result<HttpResponse, ApiError> {
    if !warm.ports.is_array() {
        return Err(ApiError::bad_request("ports must be an array"));
    }
    if matches!(
        host.state(scaler).await?.status,
        berth_common::HostStatus::Terminating | berth_common::HostStatus::Terminated
    ) {
        return Err(conflict(
            "HOST_ENDING",
            "the host is being terminated; it makes no new sessions",
        ));
    }
    let recorded: Option<SessionId> = sqlx::query_scalar(
        "INSERT INTO sessions (id, host_id, runtime, status, container_id, tty, ports) \
         VALUES ($1, $2, $3, 'WAITING', $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET container_id = sessions.container_id \
         WHERE sessions.host_id = EXCLUDED.host_id RETURNING id",
    )
    .bind(warm.id)
    .bind(&host.id)
    .bind(&warm.runtime)
    .bind(&warm.container_id)
    .bind(warm.tty)
    .bind(&warm.ports)
    .fetch_optional(&scaler.db)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            conflict("TTY_TAKEN", "another session of this host holds that TTY")
        }
        _ => database_error("recording a warm session", e),
    })?;
    recorded.ok_or_else(|| conflict("SESSION_ID_TAKEN", "that session id is another host's"))?;
    ok(serde_json::json!({"id": warm.id}))
}

/// ALLOCATED → CONNECTING for the allocation's owner (for the token with
/// that hash only, when one is given).
async fn claim(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
    request: ClaimRequest,
) -> Result<HttpResponse, ApiError> {
    let claimed: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "UPDATE sessions SET status = 'CONNECTING', connecting_at = now() \
         WHERE id = $1 AND host_id = $2 AND status = 'ALLOCATED' AND ($3::text IS NULL OR token_sha256 = $3) \
         RETURNING user_id, token_sha256",
    )
    .bind(id)
    .bind(&host.id)
    .bind(&request.token_sha256)
    .fetch_optional(&scaler.db)
    .await
    .map_err(|e| database_error("claiming a session", e))?;
    let (user_id, token_sha256) = claimed.ok_or_else(|| {
        conflict(
            "NOT_ALLOCATED",
            "the session is not allocated (to that token) on this host",
        )
    })?;
    ok(SessionState {
        id,
        status: SessionStatus::Connecting,
        user_id,
        token_sha256,
    })
}

/// CONNECTING → RUNNING, with the sealed init answer.
/// Records (or withdraws) the end announced to one of the host's RUNNING
/// sessions; a session no longer running is answered `updated: false`.
async fn warning(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
    notice: EndNotice,
) -> Result<HttpResponse, ApiError> {
    let reason = match notice.reason.as_deref() {
        None | Some("IDLE") | Some("LIFETIME") | Some("INTERRUPTION") => notice.reason.as_deref(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "reason {other:?} is not IDLE, LIFETIME or INTERRUPTION"
            )))
        }
    };
    let text = reason.map(|r| match &notice.message {
        Some(message) => format!("{r}: {message}"),
        None => r.to_owned(),
    });
    let updated = sqlx::query(
        "UPDATE sessions SET ends_at = $3, end_warning = $4          WHERE id = $1 AND host_id = $2 AND status = 'RUNNING'",
    )
    .bind(id)
    .bind(&host.id)
    .bind(notice.ends_at)
    .bind(text.filter(|_| notice.ends_at.is_some()))
    .execute(&scaler.db)
    .await
    .map_err(|e| database_error("recording a session's end warning", e))?;
    ok(serde_json::json!({"updated": updated.rows_affected() == 1}))
}

/// A browser's login at the host's proxy, into the audit trail under the
/// session's owner. Only the host's own sessions: another's is not found.
async fn login(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
    report: LoginReport,
) -> Result<HttpResponse, ApiError> {
    let owner: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT s.user_id, h.region FROM sessions s JOIN hosts h ON h.id = s.host_id WHERE s.id = $1 AND s.host_id = $2",
    )
    .bind(id)
    .bind(&host.id)
    .fetch_optional(&scaler.db)
    .await
    .map_err(|e| database_error("reading a session's owner", e))?;
    let Some((user, region)) = owner else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such session on this host",
        ));
    };
    // The address is the host's word: kept only if it is an address.
    let address = report
        .address
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok());
    scaler.audit.record(
        Entry::new(
            ActorKind::User,
            user.as_deref().unwrap_or("-"),
            "session.login",
            &id.to_string(),
        )
        .region(&region)
        .address(address)
        .outcome(if report.accepted {
            Outcome::Ok
        } else {
            Outcome::Refused
        })
        .detail(serde_json::json!({"via": "proxy", "host": host.id})),
    );
    ok(serde_json::json!({"recorded": true}))
}

async fn running(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
    request: Running,
) -> Result<HttpResponse, ApiError> {
    let sealed = request
        .init_sealed
        .map(|b64| STANDARD.decode(b64))
        .transpose()
        .map_err(|_| ApiError::bad_request("init_sealed must be base64"))?;
    let marked = sqlx::query(
        "UPDATE sessions SET status = 'RUNNING', ready_at = now(), last_activity_at = now(), \
                init_sealed = $3 WHERE id = $1 AND host_id = $2 AND status = 'CONNECTING'",
    )
    .bind(id)
    .bind(&host.id)
    .bind(sealed)
    .execute(&scaler.db)
    .await
    .map_err(|e| database_error("marking a session RUNNING", e))?;
    if marked.rows_affected() == 1 {
        return ok(serde_json::json!({"status": "RUNNING"}));
    }
    // A retry after the first call's answer was lost finds it RUNNING.
    let now: Option<SessionStatus> =
        sqlx::query_scalar("SELECT status FROM sessions WHERE id = $1 AND host_id = $2")
            .bind(id)
            .bind(&host.id)
            .fetch_optional(&scaler.db)
            .await
            .map_err(|e| database_error("reading a session", e))?;
    match now {
        Some(SessionStatus::Running) => ok(serde_json::json!({"status": "RUNNING"})),
        Some(status) => Err(conflict(
            "NOT_CONNECTING",
            format!("the session is {status}, not CONNECTING; it was ended while starting"),
        )),
        None => Err(not_yours()),
    }
}

/// The session is being torn down; the first recorded cause wins.
async fn dying(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
    request: Dying,
) -> Result<HttpResponse, ApiError> {
    let reason = bounded(&request.reason);
    let marked = sqlx::query(
        "UPDATE sessions SET status = 'DYING', \
                status_reason = CASE WHEN outcome IS NULL THEN $3 ELSE status_reason END, \
                outcome = coalesce(outcome, $4) WHERE id = $1 AND host_id = $2",
    )
    .bind(id)
    .bind(&host.id)
    .bind(reason)
    .bind(request.outcome)
    .execute(&scaler.db)
    .await
    .map_err(|e| database_error("marking a session DYING", e))?;
    if marked.rows_affected() == 0 {
        return Err(not_yours());
    }
    scaler.hints_written();
    ok(serde_json::json!({"status": "DYING"}))
}

/// The session's container is gone: its row goes (idempotent: a row already
/// gone is fine).
async fn ended(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
) -> Result<HttpResponse, ApiError> {
    sqlx::query("DELETE FROM sessions WHERE id = $1 AND host_id = $2")
        .bind(id)
        .bind(&host.id)
        .execute(&scaler.db)
        .await
        .map_err(|e| database_error("deleting a session", e))?;
    scaler.hints_written();
    ok(serde_json::json!({}))
}

/// Warm sessions made from outdated runtime settings end; allocated ones are
/// their users' now and stay.
async fn retire(
    scaler: &Scaler,
    host: &CallingHost,
    request: SessionIds,
) -> Result<HttpResponse, ApiError> {
    let ids: Vec<uuid::Uuid> = request.ids.iter().map(|id| id.0).collect();
    let retired: Vec<SessionId> = sqlx::query_scalar(
        "UPDATE sessions SET status = 'DYING', outcome = 'ENDED', status_reason = 'its runtime changed' \
         WHERE id = ANY($1) AND host_id = $2 AND status = 'WAITING' RETURNING id",
    )
    .bind(&ids)
    .bind(&host.id)
    .fetch_all(&scaler.db)
    .await
    .map_err(|e| database_error("retiring warm sessions", e))?;
    scaler.hints_written();
    ok(SessionIds { ids: retired })
}

async fn init(
    scaler: &Scaler,
    host: &CallingHost,
    id: SessionId,
) -> Result<HttpResponse, ApiError> {
    let sealed: Option<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT init_sealed FROM sessions WHERE id = $1 AND host_id = $2")
            .bind(id)
            .bind(&host.id)
            .fetch_optional(&scaler.db)
            .await
            .map_err(|e| database_error("reading a session's init answer", e))?;
    let sealed = sealed.ok_or_else(not_yours)?;
    ok(SealedInit {
        init_sealed: sealed.map(|b| STANDARD.encode(b)),
    })
}
