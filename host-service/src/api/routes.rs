//! Routing and the handlers.

use std::sync::Arc;
use std::time::Duration;

use berth_common::auth::token_matches;
use berth_common::http::{bearer, json, read_body, text, ApiError, HttpResponse};
use berth_common::SessionId;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::host::Host;
use crate::session::finish::{self, FinishError};
use crate::session::teardown::spawn_teardown;

/// A slow client gets this long to send its whole body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const OPENAPI: &str = include_str!("openapi.json");

pub async fn handle(host: Arc<Host>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "text/plain", "ok\n")),
        (&Method::GET, ["readyz"]) => Ok(readyz(&host).await),
        (&Method::GET, ["metrics"]) => Ok(metrics(&host)),
        (&Method::GET, ["openapi.json"]) => Ok(text(StatusCode::OK, "application/json", OPENAPI)),
        (&Method::PUT, ["json_transport"]) => json_transport(&host, req).await,
        (&Method::GET, ["sessions", id]) => session_status(&host, &req, id),
        (&Method::DELETE, ["sessions", id]) => delete_session(&host, &req, id).await,
        (_, ["healthz" | "readyz" | "metrics" | "openapi.json" | "json_transport"])
        | (_, ["sessions", _]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "method not allowed here",
        )),
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

fn metrics(host: &Host) -> HttpResponse {
    host.metrics.sessions.set(host.session_count() as i64);
    text(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        host.metrics.render(),
    )
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
    let body = read_body(req, host.config.max_body_bytes, BODY_TIMEOUT).await?;
    let (id, json_data) = parse_json_transport(&body)?;
    let ports = finish::json_transport(host, id, &token, json_data)
        .await
        .map_err(|e| {
            let (status, code) = match &e {
                FinishError::Forbidden => (StatusCode::FORBIDDEN, "FORBIDDEN"),
                FinishError::AlreadyConfigured => (StatusCode::CONFLICT, "ALREADY_CONFIGURED"),
                FinishError::Gone(_) => (StatusCode::GONE, "SESSION_GONE"),
                FinishError::NotReady(_) => (StatusCode::GATEWAY_TIMEOUT, "APP_NOT_READY"),
                FinishError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            };
            ApiError::new(status, code, e.to_string())
        })?;
    Ok(json(
        StatusCode::OK,
        &json!({"session_id": id, "status": "RUNNING", "ports": ports}),
    ))
}

/// The session named in the path, if the bearer token is its owner's.
fn authorized_session(
    host: &Host,
    req: &Request<Incoming>,
    id: &str,
) -> Result<Arc<crate::session::Session>, ApiError> {
    let token = bearer(req)?;
    let id: SessionId = id.parse().map_err(|_| ApiError::forbidden())?;
    let session = host.session(id).ok_or_else(ApiError::forbidden)?;
    let owner_ok = session
        .phase()
        .owner()
        .is_some_and(|o| token_matches(&token, &o.token_sha256));
    if owner_ok {
        Ok(session)
    } else {
        Err(ApiError::forbidden())
    }
}

fn session_status(
    host: &Host,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let session = authorized_session(host, req, id)?;
    let status = session.phase().name();
    Ok(json(
        StatusCode::OK,
        &json!({"session_id": session.id, "status": status, "ports": session.ports, "tty": session.tty,
                "runtime": session.runtime.name}),
    ))
}

async fn delete_session(
    host: &Arc<Host>,
    req: &Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let session = authorized_session(host, req, id)?;
    let id = session.id;
    let _ = spawn_teardown(host, session, "deleted by its owner".to_owned()).await;
    Ok(json(
        StatusCode::OK,
        &json!({"session_id": id, "status": "DELETED"}),
    ))
}
