//! Routing and the handlers.

use std::sync::Arc;
use std::time::Duration;

use berth_common::auth::token_matches;
use berth_common::exposition::metrics_response;
use berth_common::http::{bearer, json, read_body, text, ApiError, HttpResponse};
use berth_common::SessionId;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::host::Host;
use crate::proxy::{self, Body};
use crate::session::finish::{self, FinishError};
use crate::session::teardown::{spawn_teardown, Ending};
use crate::session::{init, Session};

const OPENAPI: &str = include_str!("openapi.json");

/// Every request: the proxy and login stream or redirect; the rest answer
/// whole JSON or text.
pub async fn handle(host: Arc<Host>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (req.method(), segments.as_slice()) {
        (_, ["sessions", id, "proxy", port, ..]) => proxy::forward(&host, req, id, port).await,
        (&Method::GET | &Method::POST, ["sessions", id, "login"]) => {
            proxy::login(&host, req, id).await
        }
        (_, ["sessions", _, "login"]) => Err(ApiError::method_not_allowed("GET, POST")),
        _ => return api(host, req, &segments).await.map(proxy::boxed),
    };
    result.unwrap_or_else(|e| {
        if e.status.is_client_error() {
            host.metrics.proxy_refused.inc();
        }
        e.into_response().map(proxy::boxed)
    })
}

async fn api(host: Arc<Host>, req: Request<Incoming>, segments: &[&str]) -> HttpResponse {
    let result = match (req.method(), segments) {
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "text/plain", "ok\n")),
        (&Method::GET, ["readyz"]) => Ok(readyz(&host).await),
        (&Method::GET, ["metrics"]) => host
            .config
            .common
            .operator()
            .check(&req)
            .map(|()| metrics(&host, &req)),
        (&Method::GET, ["openapi.json"]) => Ok(text(StatusCode::OK, "application/json", OPENAPI)),
        (&Method::PUT, ["json_transport"]) => json_transport(&host, req).await,
        (&Method::GET, ["sessions", id]) => session_status(&host, &req, id).await,
        (&Method::DELETE, ["sessions", id]) => delete_session(&host, &req, id).await,
        (&Method::POST, ["sessions", id, "activity"]) => activity(&host, &req, id).await,
        (_, ["healthz" | "readyz" | "metrics" | "openapi.json"]) => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (_, ["json_transport"]) => Err(ApiError::method_not_allowed("PUT")),
        (_, ["sessions", _]) => Err(ApiError::method_not_allowed("GET, DELETE")),
        (_, ["sessions", _, "activity"]) => Err(ApiError::method_not_allowed("POST")),
        _ => Err(ApiError::not_found()),
    };
    result.unwrap_or_else(|e| {
        if e.status.is_client_error() {
            host.metrics.json_transport_refused.inc();
        }
        e.into_response()
    })
}

async fn readyz(host: &Host) -> HttpResponse {
    if host.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n");
    }
    if !host.docker.ping().await {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "docker unreachable\n",
        );
    }
    text(StatusCode::OK, "text/plain", "ready\n")
}

fn metrics(host: &Host, req: &Request<Incoming>) -> HttpResponse {
    host.metrics.sessions.set(host.session_count() as i64);
    metrics_response(req, &host.metrics.render())
}

#[derive(Debug, Deserialize)]
struct JsonTransport {
    session_id: String,
    json_data: String,
}

/// The json_transport body: a canonical session id and a string holding a
/// JSON object (kept byte for byte). Anything else is a 400.
pub fn parse_json_transport(body: &[u8]) -> Result<(SessionId, String), ApiError> {
    let request: JsonTransport = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"session_id\": \"<uuid>\", \"json_data\": \"<JSON object as a string>\"}}: {e}"
        ))
    })?;
    let id: SessionId = request
        .session_id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("session_id: {e}")))?;
    let parsed: serde_json::Value = serde_json::from_str(&request.json_data)
        .map_err(|e| ApiError::bad_request(format!("json_data must hold a JSON object: {e}")))?;
    if !parsed.is_object() {
        return Err(ApiError::bad_request(
            "json_data must hold a JSON object, not another JSON value",
        ));
    }
    Ok((id, request.json_data))
}

async fn json_transport(
    host: &Arc<Host>,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req)?;
    let body_timeout = Duration::from_secs(host.config.body_timeout_secs);
    let body = read_body(req, host.config.max_body_bytes, body_timeout).await?;
    let (id, json_data) = parse_json_transport(&body)?;
    let finished = finish::json_transport(host, id, &token, json_data)
        .await
        .map_err(|e| {
            let (status, code) = match &e {
                FinishError::Forbidden => (StatusCode::FORBIDDEN, "FORBIDDEN"),
                FinishError::AlreadyConfigured => (StatusCode::CONFLICT, "ALREADY_CONFIGURED"),
                FinishError::Gone(_) => (StatusCode::GONE, "SESSION_GONE"),
                FinishError::NotReady(_) => (StatusCode::GATEWAY_TIMEOUT, "APP_NOT_READY"),
                FinishError::InitFailed(_) => (StatusCode::BAD_GATEWAY, "INIT_FAILED"),
                FinishError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
                FinishError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            };
            // Internal detail (Docker's, the database's) stays in the log.
            let message = match &e {
                FinishError::Internal(_) => {
                    tracing::error!(session = %id, error = %e, "json_transport failed");
                    "finishing the session failed on the host; it was torn down, request a new session".to_owned()
                }
                FinishError::Unavailable(_) => {
                    tracing::warn!(session = %id, error = %e, "json_transport could not check the token");
                    "the host could not check the session's token just now; nothing was changed, retry".to_owned()
                }
                _ => e.to_string(),
            };
            ApiError::new(status, code, message)
        })?;
    let mut body = json!({"session_id": id, "status": "RUNNING", "ports": finished.ports});
    if let Some(init) = finished.init {
        body["init"] = init;
    }
    Ok(json(StatusCode::OK, &body))
}

/// The session named in the path, if the bearer token is its owner's.
async fn authorized_session(
    host: &Host,
    req: &Request<Incoming>,
    id: &str,
) -> Result<Arc<Session>, ApiError> {
    let token = bearer(req)?;
    let id: SessionId = id.parse().map_err(|_| ApiError::forbidden())?;
    let session = host.session(id).ok_or_else(ApiError::forbidden)?;
    let owner = finish::current_owner(host, &session)
        .await
        .map_err(|error| {
            tracing::warn!(session = %id, %error, "could not re-read a session's token");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the host could not check the session's token just now; retry",
            )
        })?;
    let owner_ok = owner.is_some_and(|o| token_matches(&token, &o.token_sha256));
    if owner_ok {
        Ok(session)
    } else {
        Err(ApiError::forbidden())
    }
}

async fn session_status(
    host: &Host,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let session = authorized_session(host, req, id).await?;
    let status = session.phase().name();
    let mut body = json!({"session_id": session.id, "status": status, "ports": session.ports, "tty": session.tty,
                "runtime": session.runtime.name, "connections": session.activity.connections(),
                "idle_s": session.activity.idle_for(&session.paths.session).as_secs(),
                "lifetime_ends_at": session.lifetime_ends_at()});
    // An end announced ahead (idle or lifetime), as the app sees it.
    if let Some(warning) = session.warning() {
        body["ends_at"] = json!(warning.ends_at);
        body["end_reason"] = json!(warning.reason);
        body["end_message"] = json!(warning.message);
    }
    if session.runtime.init.is_some() {
        body["init"] = init_answer(host, &session, &bearer(req)?).await?;
    }
    Ok(json(StatusCode::OK, &body))
}

/// The init answer sealed on the session's row, opened with the owner's token.
async fn init_answer(
    host: &Host,
    session: &Session,
    token: &str,
) -> Result<serde_json::Value, ApiError> {
    let sealed = host.control.init(session.id).await.map_err(|error| {
        tracing::warn!(session = %session.id, %error, "reading the init answer failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "CONTROL_PLANE_UNAVAILABLE",
            "the host could not read the init answer just now; retry",
        )
    })?;
    let Some(sealed) = sealed else {
        return Ok(serde_json::Value::Null);
    };
    init::open(token, session.id, &sealed)
        .and_then(|plain| serde_json::from_slice(&plain).ok())
        .ok_or_else(ApiError::forbidden)
}

/// `POST /sessions/<id>/activity`: the owner says the session is in use.
async fn activity(
    host: &Host,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let session = authorized_session(host, req, id).await?;
    session.activity.touch();
    Ok(json(
        StatusCode::OK,
        &json!({"session_id": session.id, "idle_s": 0}),
    ))
}

async fn delete_session(
    host: &Arc<Host>,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let session = authorized_session(host, req, id).await?;
    let id = session.id;
    let _ = spawn_teardown(host, session, Ending::deleted("deleted by its owner")).await;
    Ok(json(
        StatusCode::OK,
        &json!({"session_id": id, "status": "DELETED"}),
    ))
}
