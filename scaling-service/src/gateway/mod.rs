//! The browser gateway (on when BERTH_GATEWAY_DOMAIN is set): every session
//! is its own origin, `https://<session id>.<domain>/` for its runtime's
//! default web port (the first TCP port it declares) and
//! `https://<session id>--<port>.<domain>/` for another declared TCP port.
//! A browser logs in once per hostname (`/_berth/login`, see [`login`]);
//! requests, streamed bodies and WebSockets then go to the session's host
//! proxy over pinned TLS with an access grant signed by the control plane
//! (see `berth_common::grant`), never with the user's token.
//!
//! Served on its own TLS listener (a wildcard certificate from files), or on
//! the API listener by Host header when TLS ends in front of the control
//! plane (then only requests that arrived as https, by `X-Forwarded-Proto`,
//! may log in). Nothing it holds outlives a request but caches: any replica
//! serves any session, and a restarted one carries on.

pub mod address;
mod forward;
pub mod login;
mod route;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use berth_common::grant::{unix_now, Grant, GRANT_LIFETIME};
use berth_common::http::{read_body, streaming, ApiError, StreamingBody};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::audit::{ActorKind, Entry, Outcome};
use crate::keys::ControlKeys;
use crate::metrics::Metrics;
use crate::scaler::Scaler;
use address::Address;
use forward::{Destination, HostConnections, Traffic};
use login::CookieRefused;
use route::{Route, Routes};

const LOGIN_BODY_LIMIT: usize = 8 * 1024;
const LOGIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);
const LOGOUT_PATH: &str = "/_berth/logout";

/// How a request reached the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The gateway's own TLS listener.
    Tls,
    /// The API listener, behind a TLS terminator that says the scheme in
    /// `X-Forwarded-Proto`.
    Forwarded,
}

#[derive(Debug)]
pub struct Gateway {
    pub domain: String,
    cookie_lifetime: Duration,
    /// The port in the session URLs the API hands out (none: 443).
    public_port: std::sync::OnceLock<u16>,
    keys: Arc<ControlKeys>,
    routes: Routes,
    hosts: HostConnections,
}

impl Gateway {
    pub fn new(domain: String, cookie_lifetime: Duration, keys: Arc<ControlKeys>) -> Self {
        Self {
            domain,
            cookie_lifetime,
            public_port: std::sync::OnceLock::new(),
            keys,
            routes: Routes::default(),
            hosts: HostConnections::default(),
        }
    }

    /// The port browsers reach the gateway on, when it is not 443.
    pub fn set_public_port(&self, port: u16) {
        let _ = self.public_port.set(port);
    }

    /// The session's address for its default web port.
    pub fn session_url(&self, session: berth_common::SessionId) -> String {
        match self.public_port.get() {
            Some(port) if *port != 443 => format!("https://{session}.{}:{port}", self.domain),
            _ => format!("https://{session}.{}", self.domain),
        }
    }

    /// The session address a request is for, if it is for one.
    pub fn address_of<B>(&self, req: &Request<B>) -> Option<Address> {
        address::request_authority(req).and_then(|a| address::parse(&a, &self.domain))
    }
}

/// Serves one request addressed to the gateway.
pub async fn handle(
    scaler: Arc<Scaler>,
    req: Request<Incoming>,
    listener: Listener,
) -> Response<StreamingBody> {
    let Some(gateway) = &scaler.gateway else {
        return streaming(ApiError::not_found().into_response());
    };
    let metrics = &scaler.metrics;
    let Some(address) = gateway.address_of(&req) else {
        return refusal(
            metrics,
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_A_SESSION_ADDRESS",
                format!(
                    "this gateway serves sessions at https://<session id>.{}/",
                    gateway.domain
                ),
            ),
        );
    };
    metrics.gateway_requests.inc();
    match serve(&scaler, gateway, req, &address, listener).await {
        Ok(response) => response,
        Err(error) => refusal(metrics, error),
    }
}

fn refusal(metrics: &Metrics, error: ApiError) -> Response<StreamingBody> {
    metrics
        .gateway_refusals
        .get_or_create(&vec![("reason".to_owned(), error.code.to_owned())])
        .inc();
    let mut response = streaming(error.into_response());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn serve(
    scaler: &Arc<Scaler>,
    gateway: &Gateway,
    req: Request<Incoming>,
    address: &Address,
    listener: Listener,
) -> Result<Response<StreamingBody>, ApiError> {
    let route = gateway
        .routes
        .get(&scaler.db, address.session)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "gateway: reading a session's route failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the gateway cannot look sessions up right now; retry",
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "UNKNOWN_SESSION",
                "no such session; it may have ended",
            )
        })?;
    if !route.session_live {
        return Err(ApiError::new(
            StatusCode::GONE,
            "SESSION_ENDED",
            "the session has ended; ask the scheduler for a new one",
        ));
    }
    let port = route.port(address.port).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "PORT_NOT_DECLARED",
            "the session's runtime declares no such TCP port",
        )
    })?;
    match req.uri().path() {
        login::LOGIN_PATH => return log_in(scaler, gateway, req, address, &route, listener).await,
        LOGOUT_PATH => return Ok(log_out()),
        _ => {}
    }
    if from_another_origin(req.headers(), address) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "CROSS_ORIGIN",
            "requests from other origins are refused; a session's pages are its own origin",
        ));
    }
    let token_sha256 = route.token_sha256.as_deref().unwrap_or_default();
    login::check_cookie(&gateway.keys.cookies, req.headers(), address, token_sha256).map_err(
        |refused| match refused {
            CookieRefused::Missing => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "LOGIN_REQUIRED",
                format!("log in first: {} with the session token, or a code from POST /sessions/<id>/login-code", login::LOGIN_PATH),
            ),
            CookieRefused::NotForThisAddress => ApiError::new(
                StatusCode::FORBIDDEN,
                "COOKIE_NOT_FOR_THIS_SESSION",
                "the login cookie is not this session address's; log in here",
            ),
            CookieRefused::Expired => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "LOGIN_EXPIRED",
                "the login has expired; log in again",
            ),
        },
    )?;
    let target = route
        .host
        .as_ref()
        .filter(|_| route.host_live)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "HOST_GONE",
                "the session's host is gone; ask the scheduler for the session's state",
            )
        })?;
    let grant = gateway.keys.grants.sign(&Grant {
        host: route.host_id.clone(),
        session: address.session,
        port,
        expires: unix_now() + GRANT_LIFETIME.as_secs(),
    });
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let upstream_path = format!("/sessions/{}/proxy/{port}{path_and_query}", address.session);
    let traffic = Traffic {
        up: scaler.metrics.gateway_bytes_up.clone(),
        down: scaler.metrics.gateway_bytes_down.clone(),
        upgrades: scaler.metrics.gateway_upgrades.clone(),
    };
    let destination = Destination {
        host: target,
        authority: &address.authority,
        path: &upstream_path,
        grant: &grant,
    };
    let sent = gateway.hosts.send(destination, req, traffic).await;
    if sent.is_err() {
        // The host may have moved or gone: look again next time.
        gateway.routes.forget(address.session);
    }
    sent
}

/// Whether the browser says the request comes from a page of another origin
/// (another session included): `Origin` on CORS requests, POSTs and
/// WebSockets; `Sec-Fetch-Site` on everything else. Sibling sessions are the
/// same *site*, so SameSite=Strict alone would let their pages send this
/// session's cookie. Top-level navigations (a link to the session) pass;
/// being framed by another origin does not (clickjacking).
fn from_another_origin(headers: &http::HeaderMap, address: &Address) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        if origin.as_bytes() != address.origin().as_bytes() {
            return true;
        }
    }
    let fetch = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let other_site = matches!(fetch("sec-fetch-site").as_str(), "same-site" | "cross-site");
    let top_level = fetch("sec-fetch-mode") == "navigate"
        && !matches!(
            fetch("sec-fetch-dest").as_str(),
            "iframe" | "frame" | "embed" | "object" | "fencedframe"
        );
    other_site && !top_level
}

async fn log_in(
    scaler: &Scaler,
    gateway: &Gateway,
    req: Request<Incoming>,
    address: &Address,
    route: &Route,
    listener: Listener,
) -> Result<Response<StreamingBody>, ApiError> {
    let https = listener == Listener::Tls
        || req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    if !https {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "HTTPS_REQUIRED",
            "log in over https: the TLS terminator in front of the gateway must send X-Forwarded-Proto: https",
        ));
    }
    let peer = berth_common::http::peer_address(&req);
    let form = match *req.method() {
        Method::GET => login::parse_form(req.uri().query().unwrap_or("").as_bytes()),
        Method::POST => {
            let body = read_body(req, LOGIN_BODY_LIMIT, LOGIN_BODY_TIMEOUT).await?;
            login::parse_form(&body)
        }
        _ => return Err(ApiError::method_not_allowed("GET, POST")),
    };
    if form.token.is_none() && form.code.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "LOGIN_REQUIRED",
            "send the session token (POST form field `token`) or a one-time `code` from POST /sessions/<id>/login-code",
        ));
    }
    let next = login::next_path(form.next.as_deref())?;
    let owner = login::proves_owner(&scaler.db, &form, address, route)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "gateway: spending a login code failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the login cannot be checked right now; retry",
            )
        })?;
    scaler.audit.record(
        Entry::new(
            ActorKind::User,
            route.user_id.as_deref().unwrap_or("-"),
            "session.login",
            &address.session.to_string(),
        )
        .address(peer)
        .outcome(if owner { Outcome::Ok } else { Outcome::Refused })
        .detail(serde_json::json!({"via": "gateway", "host": route.host_id})),
    );
    let Some(token_sha256) = route.token_sha256.as_deref().filter(|_| owner) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "LOGIN_REFUSED",
            "the token is not this session's, or the code is unknown, spent or expired; ask for a new code",
        ));
    };
    let value = login::issue_cookie(
        &gateway.keys.cookies,
        address,
        token_sha256,
        gateway.cookie_lifetime,
    );
    page(
        StatusCode::OK,
        login::continue_page(&next),
        Some(login::set_cookie(&value, gateway.cookie_lifetime)),
    )
}

fn log_out() -> Response<StreamingBody> {
    page(
        StatusCode::OK,
        login::continue_page("/_berth/logged-out"),
        Some(login::clear_cookie()),
    )
    .unwrap_or_else(|e| streaming(e.into_response()))
}

/// A small HTML page of the gateway's own, never cached, running no script.
fn page(
    status: StatusCode,
    html: String,
    set_cookie: Option<String>,
) -> Result<Response<StreamingBody>, ApiError> {
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CONTENT_SECURITY_POLICY, "default-src 'none'")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(cookie) = set_cookie {
        builder = builder.header(header::SET_COOKIE, cookie);
    }
    builder
        .body(
            Full::new(Bytes::from(html))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|_| ApiError::bad_request("cannot build the page"))
}

/// Serves the gateway with its own TLS until the scaler stops.
pub async fn serve_tls(scaler: Arc<Scaler>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let header_timeout = crate::api::HEADER_TIMEOUT;
    let limits = berth_common::http::ConnectionLimits {
        header_timeout,
        max_connections: scaler.config.common.max_connections as usize,
    };
    let accept = move |tcp: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "gateway: TLS handshake failed");
                    None
                }
                Err(_) => None,
            }
        }
    };
    let stop = scaler.stop.clone();
    berth_common::http::serve(listener, stop, limits, accept, move |req| {
        handle(scaler.clone(), req, Listener::Tls)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_the_sessions_own_pages_and_top_level_navigations_pass() {
        let id = berth_common::SessionId(uuid::Uuid::new_v4());
        let a = address::parse(&format!("{id}.gw.test:8443"), "gw.test").unwrap();
        let own = format!("https://{id}.gw.test:8443");
        let passes = |pairs: &[(&'static str, &str)]| !from_another_origin(&headers(pairs), &a);
        assert!(passes(&[]), "a client that is not a browser");
        assert!(passes(&[("origin", &own)]));
        assert!(passes(&[
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors")
        ]));
        assert!(passes(&[
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate")
        ]));
        assert!(
            passes(&[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document")
            ]),
            "a link from the client app"
        );
        let sibling = "https://0b5a3f2e-61c4-4e0e-9d4b-7f1f5c1f2a10.gw.test:8443";
        assert!(!passes(&[("origin", sibling)]), "another session's page");
        assert!(!passes(&[("origin", "null")]));
        assert!(!passes(&[
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "no-cors")
        ]));
        assert!(
            !passes(&[
                ("sec-fetch-site", "same-site"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "iframe")
            ]),
            "framed by another session"
        );
    }
}
