//! The scaler's HTTP API (plain HTTP behind the platform's TLS, on $PORT):
//! assign, the caller's sessions, runtimes, regions, health and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_common::exposition::metrics_response;
use berth_common::http::{
    bearer, json, read_body, streaming as boxed, text, ApiError, HttpResponse, StreamingBody,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::assign::{AssignError, AssignRequest, Assigned};
use crate::audit::{ActorKind, Entry, Outcome};
use crate::auth::AuthError;
use crate::scaler::Scaler;

const BODY_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const OPENAPI: &str = include_str!("openapi.json");

pub async fn serve(scaler: Arc<Scaler>, listener: TcpListener) {
    let stop = scaler.stop.clone();
    let plain = |tcp: tokio::net::TcpStream| async move { Some(tcp) };
    let limits = berth_common::http::ConnectionLimits {
        header_timeout: HEADER_TIMEOUT,
        max_connections: scaler.config.common.max_connections as usize,
    };
    berth_common::http::serve(listener, stop, limits, plain, move |req| {
        handle(scaler.clone(), req)
    })
    .await;
}

/// Responses are whole, but for the host watch stream.
pub type ApiBody = StreamingBody;

pub async fn handle(scaler: Arc<Scaler>, req: Request<Incoming>) -> Response<ApiBody> {
    // TLS ends in front: session hostnames reach the gateway by Host header.
    if scaler
        .gateway
        .as_ref()
        .is_some_and(|g| g.address_of(&req).is_some())
    {
        return crate::gateway::handle(scaler, req, crate::gateway::Listener::Forwarded).await;
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "host", rest @ ..] => {
            return crate::host_api::handle(&scaler, req, rest)
                .await
                .unwrap_or_else(|e| boxed(e.into_response()));
        }
        ["v1", "operator", rest @ ..] => {
            return crate::operator::handle_api(&scaler, req, rest).await
        }
        ["ui"] => return boxed(redirect_to_ui()),
        ["ui", rest @ ..] => return crate::operator::handle_ui(&scaler, req, rest).await,
        _ => {}
    }
    let result = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "text/plain", "ok\n")),
        (&Method::GET, ["readyz"]) => Ok(readyz(&scaler).await),
        (&Method::GET, ["metrics"]) => crate::operator::require(&scaler, &req).await.map(|_| {
            scaler.metrics.host_streams.set(scaler.hub.streams() as i64);
            metrics_response(&req, &scaler.metrics.render())
        }),
        (&Method::GET, ["openapi.json"]) => Ok(text(StatusCode::OK, "application/json", OPENAPI)),
        (&Method::POST, ["sessions"]) => post_session(&scaler, req, false).await,
        (&Method::POST, ["mandelbox", "assign"]) => post_session(&scaler, req, true).await,
        (&Method::GET, ["sessions"]) => list_sessions(&scaler, &req).await,
        (&Method::GET, ["sessions", id]) => get_session(&scaler, &req, id).await,
        (&Method::DELETE, ["sessions", id]) => delete_session(&scaler, &req, id).await,
        (&Method::POST, ["sessions", id, "login-code"]) => login_code(&scaler, &req, id).await,
        (&Method::GET, ["runtimes"]) => runtimes(&scaler, &req).await,
        (&Method::GET, ["regions"]) => regions(&scaler, &req).await,
        (_, ["healthz" | "readyz" | "metrics" | "openapi.json" | "runtimes" | "regions"]) => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (_, ["sessions"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (_, ["sessions", _]) => Err(ApiError::method_not_allowed("GET, DELETE")),
        (_, ["sessions", _, "login-code"]) => Err(ApiError::method_not_allowed("POST")),
        (_, ["mandelbox", "assign"]) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found()),
    };
    boxed(result.unwrap_or_else(ApiError::into_response))
}

fn redirect_to_ui() -> HttpResponse {
    let mut response = text(StatusCode::MOVED_PERMANENTLY, "text/plain", "/ui/\n");
    response.headers_mut().insert(
        http::header::LOCATION,
        http::HeaderValue::from_static("/ui/"),
    );
    response
}

async fn readyz(scaler: &Scaler) -> HttpResponse {
    match sqlx::query("SELECT 1").execute(&scaler.db).await {
        Ok(_) => text(StatusCode::OK, "text/plain", "ready\n"),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "database unreachable\n",
        ),
    }
}

async fn user(scaler: &Scaler, req: &Request<Incoming>) -> Result<String, ApiError> {
    // The scaler wants the user's JWT, not a session token (that one is for hosts).
    let token = bearer(req).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            AuthError::Missing.to_string(),
        )
    })?;
    scaler.auth.user(&token).await.map_err(|e| match e {
        AuthError::KeysUnavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "AUTH_UNAVAILABLE",
            e.to_string(),
        ),
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string()),
    })
}

/// Whist's assign body, mapped onto Berth's.
#[derive(Debug, Deserialize)]
struct WhistAssign {
    regions: Vec<String>,
    #[serde(default)]
    client_commit_hash: String,
    #[serde(default)]
    session_id: Option<serde_json::Value>,
    #[serde(default)]
    runtime: Option<String>,
}

/// An assign body, Berth's or Whist's, validated. Anything else is a 400.
pub fn parse_assign(body: &[u8], whist: bool) -> Result<AssignRequest, ApiError> {
    let request = if whist {
        let w: WhistAssign = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed assign body: {e}")))?;
        AssignRequest {
            runtime: w.runtime.unwrap_or_else(|| "desktop".to_owned()),
            regions: w.regions,
            client_commit: w.client_commit_hash,
            client_session_id: w.session_id.map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            }),
        }
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "expected {{\"runtime\", \"regions\": [..], \"client_commit\", \"client_session_id\"}}: {e}"
            ))
        })?
    };
    request
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(request)
}

fn assign_error(e: AssignError) -> ApiError {
    let (status, code) = match &e {
        AssignError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        AssignError::UnknownRuntime(_) => (StatusCode::BAD_REQUEST, "UNKNOWN_RUNTIME"),
        AssignError::RegionNotEnabled(_) => (StatusCode::BAD_REQUEST, "REGION_NOT_ENABLED"),
        AssignError::UserLimit(_) => (StatusCode::TOO_MANY_REQUESTS, "USER_LIMIT"),
        AssignError::CommitMismatch(_) => (StatusCode::CONFLICT, "COMMIT_MISMATCH"),
        AssignError::NoCapacity | AssignError::NoGpuCapacity { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "NO_CAPACITY")
        }
        AssignError::Ending => (StatusCode::CONFLICT, "SESSION_ENDING"),
        AssignError::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    };
    if let AssignError::Db(error) = &e {
        // The database's words stay in the log.
        tracing::error!(%error, "assign failed");
        return ApiError::new(status, code, "the assign failed on the server; retry");
    }
    ApiError::new(status, code, e.to_string())
}

async fn post_session(
    scaler: &Arc<Scaler>,
    req: Request<Incoming>,
    whist: bool,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let address = berth_common::http::peer_address(&req);
    let user = user(scaler, &req).await?;
    let body = read_body(req, scaler.config.max_body_bytes, BODY_TIMEOUT).await?;
    let request = parse_assign(&body, whist)?;
    let outcome = match scaler.assign(&user, &request).await {
        Some(outcome) => outcome.map_err(|e| {
            if matches!(
                e,
                AssignError::NoCapacity | AssignError::NoGpuCapacity { .. }
            ) {
                // Demand the buffer did not meet: let the controllers look now.
                for region in &request.regions {
                    scaler.wake(region);
                }
            }
            assign_error(e)
        }),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ASSIGN_TIMEOUT",
            "the assign did not finish in time; retry",
        )),
    };
    scaler
        .metrics
        .assign_seconds
        .observe(started.elapsed().as_secs_f64());
    let assigned = outcome.inspect_err(|error| {
        scaler.metrics.assign_failures.inc();
        scaler.audit.record(
            Entry::new(ActorKind::User, &user, "session.assign", "")
                .address(address.clone())
                .outcome(if error.status.is_server_error() { Outcome::Failed } else { Outcome::Refused })
                .detail(json!({"code": error.code, "runtime": request.runtime, "regions": request.regions})),
        );
    })?;
    scaler.audit.record(
        Entry::new(ActorKind::User, &user, "session.assign", &assigned.session_id.to_string())
            .region(&assigned.host.region)
            .address(address)
            .detail(json!({"runtime": request.runtime, "host": assigned.host.id, "created": assigned.created})),
    );
    scaler.metrics.assigns.inc();
    if assigned.created {
        // A slot left the buffer: the region may need a host.
        for region in &request.regions {
            scaler.wake(region);
        }
    }
    let status = if assigned.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &assigned_body(&assigned, whist)))
}

fn assigned_body(a: &Assigned, whist: bool) -> serde_json::Value {
    let mut body = serde_json::to_value(a).unwrap_or_default();
    if whist {
        body["mandelbox_id"] = json!(a.session_id);
        body["ip"] = json!(a.host.ip);
    }
    body
}

fn session_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse::<berth_common::SessionId>()
        .map(|s| s.0)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such session"))
}

const SESSION_SELECT: &str = "SELECT s.id, s.status::text AS status, s.status_reason, s.runtime, s.ports, s.created_at, s.ready_at, s.ends_at, s.end_warning, \
     h.id AS host_id, host(h.public_ip) AS ip, h.api_port, h.cert_sha256, h.status::text AS host_status, h.unreachable_since \
     FROM sessions s JOIN hosts h ON h.id = s.host_id";

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    status: String,
    status_reason: Option<String>,
    runtime: String,
    ports: serde_json::Value,
    created_at: chrono::DateTime<chrono::Utc>,
    ready_at: Option<chrono::DateTime<chrono::Utc>>,
    ends_at: Option<chrono::DateTime<chrono::Utc>>,
    end_warning: Option<String>,
    host_status: String,
    unreachable_since: Option<chrono::DateTime<chrono::Utc>>,
    host_id: String,
    ip: Option<String>,
    api_port: Option<i32>,
    cert_sha256: Option<String>,
}

fn session_json(s: &SessionRow) -> serde_json::Value {
    // The session itself is untouched while its host is unreachable; the user
    // is told so, and since when, rather than nothing or "ENDED".
    let status_reason = match s.unreachable_since {
        Some(since) if s.host_status == "UNREACHABLE" => Some(format!(
            "host unreachable since {}",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
        _ => s.status_reason.clone(),
    };
    json!({"session_id": s.id, "status": s.status, "status_reason": status_reason, "runtime": s.runtime, "ports": s.ports,
           "created_at": s.created_at, "ready_at": s.ready_at,
           "ends_at": s.ends_at, "end_warning": s.end_warning,
           "host": {"id": s.host_id, "ip": s.ip, "api_port": s.api_port, "cert_sha256": s.cert_sha256,
                    "status": s.host_status, "unreachable_since": s.unreachable_since}})
}

fn internal(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "database query failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "the database query failed; retry",
    )
}

async fn get_session(
    scaler: &Scaler,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let user = user(scaler, req).await?;
    let id = session_id(id)?;
    // Another user's session is "not found", not "forbidden": ids do not leak.
    let row: Option<SessionRow> = sqlx::query_as(&format!(
        "{SESSION_SELECT} WHERE s.id = $1 AND s.user_id = $2"
    ))
    .bind(id)
    .bind(&user)
    .fetch_optional(&scaler.db)
    .await
    .map_err(internal)?;
    if let Some(row) = row {
        return Ok(json(StatusCode::OK, &session_json(&row)));
    }
    // Gone: say how it ended (REAPED, DELETED, FAILED, ENDED) and why.
    let ended: Option<EndedRow> =
        sqlx::query_as(&format!("{ENDED_SELECT} WHERE id = $1 AND user_id = $2"))
            .bind(id)
            .bind(&user)
            .fetch_optional(&scaler.db)
            .await
            .map_err(internal)?;
    let ended = ended
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such session"))?;
    Ok(json(StatusCode::OK, &ended_json(&ended)))
}

/// `POST /sessions/<id>/login-code`: a one-time code that logs a browser in
/// to the session on the gateway (`url` opens it), so the session token never
/// sits in a URL.
async fn login_code(
    scaler: &Scaler,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let user = user(scaler, req).await?;
    let id = session_id(id)?;
    let Some(gateway) = &scaler.gateway else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "GATEWAY_OFF",
            "this scheduler serves no browser gateway (BERTH_GATEWAY_DOMAIN is unset)",
        ));
    };
    // Another user's session is "not found", not "forbidden": ids do not leak.
    let live: Option<bool> = sqlx::query_scalar(
        "SELECT status IN ('ALLOCATED', 'CONNECTING', 'RUNNING') FROM sessions WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(&user)
    .fetch_optional(&scaler.db)
    .await
    .map_err(internal)?;
    match live {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such session",
        )),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "SESSION_NOT_LIVE",
            "the session is ending or ended; ask for a new one",
        )),
        Some(true) => {
            let session = berth_common::SessionId(id);
            let code = crate::gateway::login::new_code(&scaler.db, session)
                .await
                .map_err(internal)?;
            let base = gateway.session_url(session);
            Ok(json(
                StatusCode::CREATED,
                &json!({
                    "code": code,
                    "url": format!("{base}{}?code={code}", crate::gateway::login::LOGIN_PATH),
                    "session_url": format!("{base}/"),
                    "expires_in_s": crate::gateway::login::CODE_LIFETIME.as_secs(),
                }),
            ))
        }
    }
}

/// How long the sessions list shows a user's ended sessions.
const RECENTLY_ENDED: &str = "interval '24 hours'";

const ENDED_SELECT: &str = "SELECT id, outcome::text AS outcome, reason, runtime, created_at, ended_at FROM session_history";

#[derive(sqlx::FromRow)]
struct EndedRow {
    id: Uuid,
    outcome: String,
    reason: String,
    runtime: String,
    created_at: chrono::DateTime<chrono::Utc>,
    ended_at: chrono::DateTime<chrono::Utc>,
}

fn ended_json(e: &EndedRow) -> serde_json::Value {
    json!({"session_id": e.id, "status": e.outcome, "status_reason": e.reason, "runtime": e.runtime,
           "created_at": e.created_at, "ended_at": e.ended_at, "host": null})
}

async fn list_sessions(scaler: &Scaler, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let user = user(scaler, req).await?;
    let rows: Vec<SessionRow> = sqlx::query_as(&format!(
        "{SESSION_SELECT} WHERE s.user_id = $1 ORDER BY s.created_at"
    ))
    .bind(&user)
    .fetch_all(&scaler.db)
    .await
    .map_err(internal)?;
    let ended: Vec<EndedRow> = sqlx::query_as(&format!(
        "{ENDED_SELECT} WHERE user_id = $1 AND ended_at > now() - {RECENTLY_ENDED} ORDER BY ended_at DESC LIMIT 50"
    ))
    .bind(&user)
    .fetch_all(&scaler.db)
    .await
    .map_err(internal)?;
    Ok(json(
        StatusCode::OK,
        &json!({"sessions": rows.iter().map(session_json).collect::<Vec<_>>(),
                "ended": ended.iter().map(ended_json).collect::<Vec<_>>()}),
    ))
}

async fn delete_session(
    scaler: &Scaler,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let user = user(scaler, req).await?;
    let id = session_id(id)?;
    // DYING notifies the host, which tears the session down and frees the slot.
    let moved = sqlx::query(
        "UPDATE sessions SET status = 'DYING', \
                status_reason = CASE WHEN outcome IS NULL THEN 'deleted by its owner' ELSE status_reason END, \
                outcome = coalesce(outcome, 'DELETED') WHERE id = $1 AND user_id = $2",
    )
        .bind(id)
        .bind(&user)
        .execute(&scaler.db)
        .await
        .map_err(internal)?;
    if moved.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such session",
        ));
    }
    scaler.hints_written();
    scaler.audit.record(
        Entry::new(ActorKind::User, &user, "session.delete", &id.to_string())
            .address(berth_common::http::peer_address(req)),
    );
    Ok(json(
        StatusCode::ACCEPTED,
        &json!({"session_id": id, "status": "DYING"}),
    ))
}

#[derive(sqlx::FromRow)]
struct RuntimeRow {
    name: String,
    description: String,
    ports: serde_json::Value,
    memory_mib: i32,
    cpu_shares: i32,
    idle_timeout_s: Option<i32>,
    has_init: bool,
    user_volume_path: Option<String>,
    egress: String,
}

async fn runtimes(scaler: &Scaler, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    user(scaler, req).await?;
    let rows: Vec<RuntimeRow> = sqlx::query_as(
        "SELECT name, description, ports, memory_mib, cpu_shares, idle_timeout_s, \
                init IS NOT NULL AS has_init, user_volume->>'path' AS user_volume_path, egress FROM runtimes ORDER BY name",
    )
    .fetch_all(&scaler.db)
    .await
    .map_err(internal)?;
    let list: Vec<_> = rows
        .into_iter()
        .map(|r| {
            json!({"name": r.name, "description": r.description, "ports": r.ports,
                   "limits": {"memory_mib": r.memory_mib, "cpu_shares": r.cpu_shares, "idle_timeout_s": r.idle_timeout_s},
                   "memory_mib": r.memory_mib, "cpu_shares": r.cpu_shares, "idle_timeout_s": r.idle_timeout_s,
                   "init": r.has_init, "user_volume": r.user_volume_path, "egress": r.egress})
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({"runtimes": list})))
}

/// One region as `GET /regions` shows it.
#[derive(sqlx::FromRow)]
struct RegionSummary {
    name: String,
    enabled: bool,
    target_free_slots: i32,
    max_hosts: i32,
    purchase: String,
    policy: String,
    hosts: i64,
    free_slots: i64,
    unreachable_hosts: i64,
    warm_sessions: i64,
}

async fn regions(scaler: &Scaler, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    crate::operator::require(scaler, req).await?;
    let rows: Vec<RegionSummary> = sqlx::query_as(
        "SELECT r.name, r.enabled, r.target_free_slots, r.max_hosts, r.purchase, r.policy, \
                count(h.id) FILTER (WHERE h.status NOT IN ('TERMINATING', 'TERMINATED')) AS hosts, \
                coalesce(sum(h.free_slots) FILTER (WHERE h.status = 'ACTIVE'), 0) AS free_slots, \
                count(h.id) FILTER (WHERE h.status = 'UNREACHABLE') AS unreachable_hosts, \
                coalesce(sum((SELECT count(*) FROM sessions s WHERE s.host_id = h.id AND s.status = 'WAITING')) \
                         FILTER (WHERE h.status = 'ACTIVE'), 0)::bigint AS warm_sessions \
         FROM regions r LEFT JOIN hosts h ON h.region = r.name GROUP BY r.name ORDER BY r.name",
    )
    .fetch_all(&scaler.db)
    .await
    .map_err(internal)?;
    let mut list = Vec::with_capacity(rows.len());
    for r in rows {
        // A forecast region's plan, computed now from the same rows its controller reads.
        let forecast = match r.policy.as_str() {
            "forecast" => crate::demand::current_plan(&scaler.db, &r.name)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, region = r.name, "reading the region's forecast failed");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "INTERNAL",
                        "the database query failed; retry",
                    )
                })?,
            _ => None,
        };
        // Free slots are capacity; warm sessions are what an assign can take now.
        let silence = scaler.silence(&r.name).unwrap_or_default();
        list.push(json!({"name": r.name, "enabled": r.enabled, "target_free_slots": r.target_free_slots,
               "max_hosts": r.max_hosts, "purchase": r.purchase, "hosts": r.hosts, "free_slots": r.free_slots,
               "warm_sessions": r.warm_sessions, "unreachable_hosts": r.unreachable_hosts,
               "liveness": {"silent_hosts": silence.silent_hosts, "mass_silence_suspected": silence.mass_silence_suspected},
               "policy": r.policy, "forecast": forecast}));
    }
    Ok(json(StatusCode::OK, &json!({"regions": list})))
}
