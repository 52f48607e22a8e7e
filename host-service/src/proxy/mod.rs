//! The session proxy: `/sessions/<id>/proxy/<container port>/<path>` on the
//! host's HTTPS port forwards HTTP (bodies streamed both ways) and WebSocket
//! upgrades to that session's own container, on a port its runtime declares.
//! The target address is never taken from the request: it is the session's
//! container IP and a port checked against the runtime. Requests carry the
//! session token (`Authorization: Bearer`) or the cookie `/login` sets.

pub mod cookie;

use std::sync::Arc;
use std::time::Duration;

use berth_common::auth::token_matches;
use berth_common::grant::{unix_now, GrantRefused, GRANT_HEADER};
use berth_common::host_api::LoginReport;
use berth_common::http::{read_body, requested_upgrade, strip_hop_by_hop, ApiError};
use berth_common::relay::{tunnel, Observed};
use berth_common::SessionId;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use crate::host::Host;
use crate::resources::Protocol;
use crate::session::{Owner, Session};
use crate::upstream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response bodies of the host API: whole (JSON) or streamed (the proxy).
pub type Body = BoxBody<Bytes, BoxError>;

/// An app gets this long to start answering a proxied request.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(120);
const LOGIN_BODY_LIMIT: usize = 8 * 1024;
const LOGIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// How a request proved it may use the session.
enum Credential {
    Bearer,
    Cookie,
    /// An access grant from the control plane's browser gateway.
    Grant,
}

/// The session, if `value` is a grant the control plane signed for this
/// host, this session and this port, and unexpired.
fn authorize_grant(
    host: &Host,
    value: &HeaderValue,
    id: &str,
    raw_port: &str,
) -> Result<(Arc<Session>, Owner, Credential), ApiError> {
    let verifier = host.grants.as_ref().ok_or_else(|| {
        refused(
            StatusCode::FORBIDDEN,
            "GRANTS_UNAVAILABLE",
            "this host holds no grant key from the control plane; it gets one when it registers",
        )
    })?;
    let grant = value
        .to_str()
        .map_err(|_| GrantRefused::Malformed)
        .and_then(|v| verifier.verify(v, unix_now()))
        .map_err(|why| {
            let code = match why {
                GrantRefused::Expired => "GRANT_EXPIRED",
                _ => "GRANT_INVALID",
            };
            refused(StatusCode::FORBIDDEN, code, why.to_string())
        })?;
    let (session, owner) = session_and_owner(host, id)?;
    if grant.host != host.id.as_str()
        || grant.session != session.id
        || grant.port.to_string() != raw_port
    {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "GRANT_WRONG_TARGET",
            GrantRefused::WrongTarget.to_string(),
        ));
    }
    Ok((session, owner, Credential::Grant))
}

/// The session, if the request holds its token or a valid cookie. Unknown
/// ids are refused exactly like wrong tokens: ids do not leak.
fn authenticate(
    host: &Host,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Arc<Session>, Owner, Credential), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(berth_common::auth::bearer_token);
    let cookie = cookie::find(headers);
    if bearer.is_none() && cookie.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "send the session token as `Authorization: Bearer <token>`, or log in at /sessions/<id>/login",
        ));
    }
    let (session, owner) = session_and_owner(host, id)?;
    let id = session.id;
    let credential = if bearer.is_some_and(|t| token_matches(t, &owner.token_sha256)) {
        Credential::Bearer
    } else if cookie.is_some_and(|c| host.cookies.verify(&c, id, &owner.token_sha256)) {
        Credential::Cookie
    } else {
        return Err(ApiError::forbidden());
    };
    Ok((session, owner, credential))
}

/// The session named by a raw path segment and its owner. Unknown ids and
/// sessions without an owner are refused exactly like wrong tokens.
fn session_and_owner(host: &Host, id: &str) -> Result<(Arc<Session>, Owner), ApiError> {
    let id: SessionId = id.parse().map_err(|_| ApiError::forbidden())?;
    let session = host.session(id).ok_or_else(ApiError::forbidden)?;
    let owner = session
        .phase()
        .owner()
        .cloned()
        .ok_or_else(ApiError::forbidden)?;
    Ok((session, owner))
}

/// A port the session's runtime declares (TCP): the only ones reachable.
fn allowed_port(session: &Session, port: &str) -> Result<u16, ApiError> {
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        refused(
            StatusCode::BAD_REQUEST,
            "BAD_PORT",
            format!("{port:?} is not a port number"),
        )
    })?;
    let declared = session
        .ports
        .iter()
        .any(|m| m.container_port == port && m.protocol == Protocol::Tcp);
    if declared {
        Ok(port)
    } else {
        Err(refused(
            StatusCode::FORBIDDEN,
            "PORT_NOT_ALLOWED",
            format!("port {port} is not one of this session's TCP ports; see GET /sessions/<id>"),
        ))
    }
}

/// `ANY /sessions/<id>/proxy/<port>/<rest>`.
pub async fn forward(
    host: &Arc<Host>,
    mut req: Request<Incoming>,
    id: &str,
    raw_port: &str,
) -> Result<Response<Body>, ApiError> {
    let (session, owner, credential) = match req.headers().get(GRANT_HEADER) {
        Some(grant) => authorize_grant(host, grant, id, raw_port)?,
        None => authenticate(host, req.headers(), id)?,
    };
    let port = allowed_port(&session, raw_port)?;
    if session.running_owner().as_ref() != Some(&owner) {
        return Err(refused(
            StatusCode::CONFLICT,
            "SESSION_NOT_RUNNING",
            "the session is not running; finish it with PUT /json_transport first",
        ));
    }
    let ip = session.container_ip.ok_or_else(|| {
        refused(
            StatusCode::BAD_GATEWAY,
            "NO_CONTAINER_ADDRESS",
            "the session's container has no address",
        )
    })?;
    let target = std::net::SocketAddr::new(ip, port);
    // The raw segments, so the app's path is exactly what followed them.
    let prefix = format!("/sessions/{id}/proxy/{raw_port}");
    let upstream_uri = upstream_path(&req, &prefix);
    let upgrade = requested_upgrade(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let original_host = headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| a.as_str().parse().ok()));
    strip_hop_by_hop(&mut headers);
    cookie::strip(&mut headers);
    headers.remove(GRANT_HEADER);
    if matches!(credential, Credential::Bearer) {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(upgrade) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
    if let Some(h) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
        headers.insert(header::HOST, h);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    // Through the gateway the app is the root of its own origin.
    if !matches!(credential, Credential::Grant) {
        if let Ok(v) = HeaderValue::from_str(&prefix) {
            headers.insert(HeaderName::from_static("x-forwarded-prefix"), v);
        }
    }

    let guard = session.activity.connect();
    let request_guard = session.activity.connect();
    let mut upstream_req = Request::new(Observed::new(body, move |_| request_guard.touch()));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = upstream_uri
        .parse()
        .map_err(|_| ApiError::bad_request("the path cannot be forwarded"))?;
    *upstream_req.version_mut() = Version::HTTP_11;
    *upstream_req.headers_mut() = headers;

    let bad_gateway = |why: String| {
        tracing::debug!(session = %session.id, %target, why, "proxy: upstream failed");
        refused(
            StatusCode::BAD_GATEWAY,
            "APP_UNREACHABLE",
            format!("the session's app on port {port} did not answer: {why}"),
        )
    };
    let mut sender = upstream::connect(target).await.map_err(bad_gateway)?;
    let mut response =
        tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, sender.send_request(upstream_req))
            .await
            .map_err(|_| bad_gateway(format!("no answer within {RESPONSE_HEAD_TIMEOUT:?}")))?
            .map_err(|e| bad_gateway(e.to_string()))?;
    host.metrics.proxy_requests.inc();

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(bad_gateway("the app switched protocols unasked".into()));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        // One open connection, active on every chunk either way, until both sides end.
        let guard = Arc::new(guard);
        let up = guard.clone();
        tokio::spawn(tunnel(
            client_upgrade,
            upstream_upgrade,
            move |_| up.touch(),
            move |_| guard.touch(),
        ));
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, boxed(Empty::<Bytes>::new())));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        boxed(Observed::new(body, move |_| guard.touch())),
    ))
}

/// The path and query the app sees: what follows the proxy prefix.
fn upstream_path<B>(req: &Request<B>, prefix: &str) -> String {
    let path = req.uri().path();
    let rest = path.strip_prefix(prefix).unwrap_or("");
    let rest = if rest.starts_with('/') { rest } else { "/" };
    // "//host/x" would read as an authority to some apps: keep one slash.
    let rest = format!("/{}", rest.trim_start_matches('/'));
    match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: Option<String>,
    next: Option<String>,
}

/// `GET /sessions/<id>/login?token=…&next=…` (or a POSTed form with the same
/// fields): sets the session's proxy cookie and redirects to `next`, a path
/// under this session's proxy (by default its first TCP port's root). The
/// answer is never cached and sends no Referer onwards, so the token in the
/// URL goes no further.
pub async fn login(
    host: &Arc<Host>,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let address = berth_common::http::peer_address(&req);
    let form: LoginForm = if req.method() == Method::POST {
        let body = read_body(req, LOGIN_BODY_LIMIT, LOGIN_BODY_TIMEOUT).await?;
        login_form(&body)
    } else {
        login_form(req.uri().query().unwrap_or("").as_bytes())
    };
    let token = form.token.ok_or_else(ApiError::unauthorized)?;
    let (session, owner) = session_and_owner(host, id)?;
    let accepted = token_matches(&token, &owner.token_sha256);
    report_login(host, session.id, address, accepted);
    if !accepted {
        return Err(ApiError::forbidden());
    }
    let id = session.id;
    let prefix = format!("/sessions/{id}/proxy/");
    let next = match form.next {
        Some(next) => next,
        None => {
            let port = session
                .ports
                .iter()
                .find(|m| m.protocol == Protocol::Tcp)
                .map(|m| m.container_port)
                .ok_or_else(|| ApiError::bad_request("the session has no TCP port to proxy to"))?;
            format!("{prefix}{port}/")
        }
    };
    let location = HeaderValue::from_str(&next)
        .ok()
        .filter(|_| next.starts_with(&prefix))
        .ok_or_else(|| ApiError::bad_request(format!("next must be a path under {prefix}")))?;
    let lifetime = Duration::from_secs(host.config.proxy_cookie_secs);
    let value = host.cookies.issue(id, &owner.token_sha256, lifetime);
    let set_cookie = HeaderValue::from_str(&cookie::set_cookie(id, &value, lifetime))
        .map_err(|_| ApiError::bad_request("cannot build the cookie"))?;
    let response = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .header(header::SET_COOKIE, set_cookie)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(boxed(Empty::<Bytes>::new()))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(response)
}

/// Tells the control plane of a login attempt (its audit trail), in the
/// background: the browser does not wait for it.
fn report_login(host: &Arc<Host>, id: SessionId, address: Option<String>, accepted: bool) {
    let control = host.control.clone();
    let stop = host.stop.clone();
    host.tasks.spawn(async move {
        let report = LoginReport { address, accepted };
        let told = control
            .until_accepted("reporting a proxy login", &stop, || control.login(id, &report))
            .await;
        if let Err(error) = told {
            tracing::warn!(session = %id, %error, "the control plane was not told of a proxy login");
        }
    });
}

fn login_form(bytes: &[u8]) -> LoginForm {
    let mut form = LoginForm {
        token: None,
        next: None,
    };
    for (key, value) in form_urlencoded::parse(bytes) {
        match key.as_ref() {
            "token" => form.token = Some(value.into_owned()),
            "next" => form.next = Some(value.into_owned()),
            _ => {}
        }
    }
    form
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn the_app_sees_only_the_path_after_the_prefix() {
        let prefix = "/sessions/x/proxy/8080";
        for (uri, want) in [
            ("/sessions/x/proxy/8080", "/"),
            ("/sessions/x/proxy/8080/", "/"),
            ("/sessions/x/proxy/8080/a/b?c=d", "/a/b?c=d"),
            ("/sessions/x/proxy/8080//evil.example/x", "/evil.example/x"),
            ("/sessions/x/proxy/80800/x", "/"),
            ("https://db.internal:5432/sessions/x/proxy/8080/q", "/q"),
        ] {
            assert_eq!(upstream_path(&request(uri), prefix), want, "{uri}");
        }
    }
}
