//! Who an operator request comes from. Three credentials pass: the operator
//! token (`BERTH_OPERATOR_TOKEN`), a JWT verified like a user's that carries
//! the operator claim (`BERTH_OPERATOR_CLAIM` = `BERTH_OPERATOR_CLAIM_VALUE`),
//! or the dashboard's login cookie. A valid user JWT without the claim is a
//! 403; no credential, or a bad one, a 401.
//!
//! The cookie is HMAC-signed with the control plane's shared cookie key under
//! its own prefix (so a gateway cookie never passes as one), HttpOnly and
//! SameSite=Strict. Requests it authenticates that change something must
//! also carry `X-Requested-With: berth-ui` and, when they send an Origin, this
//! very origin: another site cannot add either to a request.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use berth_common::grant::unix_now;
use berth_common::http::{bearer, find_cookie, ApiError};
use http::{HeaderMap, Method, Request, StatusCode};
use ring::hmac;

use crate::auth::AuthError;
use crate::scaler::Scaler;

pub(crate) const COOKIE_NAME: &str = "berth-operator";
/// The header the dashboard's script sends with every change it asks for.
pub(crate) const UI_HEADER: &str = "x-requested-with";
pub(crate) const UI_HEADER_VALUE: &str = "berth-ui";
/// The subject the operator token stands for in the audit trail.
pub(crate) const TOKEN_SUBJECT: &str = "operator-token";

/// An authenticated operator.
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    pub subject: String,
    /// The peer address the request came from.
    pub address: Option<String>,
}

/// How an operator proved who they are, for the dashboard's login.
#[derive(Debug)]
pub(crate) struct Proven {
    pub subject: String,
    /// Unix seconds after which the proof is void (a JWT's `exp`).
    pub expires: Option<u64>,
}

/// A refusal, and the user it refused when a valid user's JWT was sent (so
/// the refusal can be recorded without verifying the token again).
#[derive(Debug)]
pub(crate) struct Refused {
    pub error: ApiError,
    pub user: Option<String>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Self { error, user: None }
    }
}

/// The operator behind `req`, or the typed refusal.
pub(crate) async fn authenticate<B>(
    scaler: &Scaler,
    req: &Request<B>,
) -> Result<Operator, Refused> {
    let address = berth_common::http::peer_address(req);
    if let Ok(token) = bearer(req) {
        let proven = prove_token(scaler, &token).await?;
        return Ok(Operator {
            subject: proven.subject,
            address,
        });
    }
    let Some(value) = find_cookie(req.headers(), COOKIE_NAME) else {
        return Err(unauthorized().into());
    };
    let subject = check_cookie(&scaler.keys.cookies, value).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "OPERATOR_LOGIN_EXPIRED",
            "the dashboard login is expired or invalid; log in again at /ui/login",
        )
    })?;
    if !is_safe(req.method()) && !from_the_dashboard(req.headers()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "CROSS_ORIGIN",
            "a change made with the dashboard's cookie must come from the dashboard's own page",
        )
        .into());
    }
    Ok(Operator { subject, address })
}

/// Checks a credential given as text (a header's, or the login form's).
pub(crate) async fn prove_token(scaler: &Scaler, token: &str) -> Result<Proven, Refused> {
    if scaler.config.common.operator().matches(token) {
        return Ok(Proven {
            subject: TOKEN_SUBJECT.to_owned(),
            expires: None,
        });
    }
    // Only something shaped like a JWT goes to the verifier.
    if token.split('.').count() != 3 {
        return Err(unauthorized().into());
    }
    let verified = scaler.auth.verify(token).await.map_err(|e| match e {
        AuthError::KeysUnavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "AUTH_UNAVAILABLE",
            e.to_string(),
        ),
        _ => unauthorized(),
    })?;
    if !verified.has_claim(
        &scaler.config.operator_claim,
        &scaler.config.operator_claim_value,
    ) {
        return Err(Refused {
            error: ApiError::new(
                StatusCode::FORBIDDEN,
                "OPERATOR_ONLY",
                format!(
                    "this token is a user's: operator routes need the operator token or a token whose {:?} claim is {:?}",
                    scaler.config.operator_claim, scaler.config.operator_claim_value
                ),
            ),
            user: Some(verified.subject),
        });
    }
    Ok(Proven {
        subject: verified.subject,
        expires: verified.expires,
    })
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "OPERATOR_ONLY",
        "this is an operator surface: send the operator token (BERTH_OPERATOR_TOKEN) or an operator's JWT as `Authorization: Bearer <token>`, or log in at /ui/login",
    )
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

fn from_the_dashboard(headers: &HeaderMap) -> bool {
    let marked = headers
        .get(UI_HEADER)
        .is_some_and(|v| v.as_bytes() == UI_HEADER_VALUE.as_bytes());
    let same_origin = match headers.get(http::header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok());
            let origin = origin.to_str().ok();
            match (origin, host) {
                (Some(origin), Some(host)) => origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
                _ => false,
            }
        }
    };
    marked && same_origin
}

fn cookie_message(subject: &str, expiry: u64) -> String {
    format!("berth-operator-v1|{subject}|{expiry}")
}

/// `<base64url subject>.<expiry>.<hex HMAC>`.
pub(crate) fn issue_cookie(key: &hmac::Key, subject: &str, expiry: u64) -> String {
    let subject = URL_SAFE_NO_PAD.encode(subject);
    let tag = hmac::sign(key, cookie_message(&subject, expiry).as_bytes());
    format!("{subject}.{expiry}.{}", hex::encode(tag.as_ref()))
}

/// The subject of a valid, unexpired cookie.
pub(crate) fn check_cookie(key: &hmac::Key, value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '.');
    let (subject, expiry, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let expiry_secs: u64 = expiry.parse().ok()?;
    hmac::verify(
        key,
        cookie_message(subject, expiry_secs).as_bytes(),
        &hex::decode(tag).ok()?,
    )
    .ok()?;
    if expiry_secs <= unix_now() {
        return None;
    }
    String::from_utf8(URL_SAFE_NO_PAD.decode(subject).ok()?).ok()
}

/// The cookie's attributes. `Secure` unless the request came over plain HTTP
/// to a loopback name (a developer's own machine): behind TLS in front it is
/// always set, and a browser then never sends it over plain HTTP.
pub(crate) fn set_cookie(value: &str, lifetime: Duration, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        lifetime.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
}

/// Whether the dashboard's cookie must be `Secure` for this request.
pub(crate) fn wants_secure_cookie(headers: &HeaderMap) -> bool {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    let loopback = name == "localhost"
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    forwarded_https || !loopback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_cookie_names_its_subject_until_it_expires() {
        let later = unix_now() + 60;
        let value = issue_cookie(&key(), "alice@example.com", later);
        assert_eq!(
            check_cookie(&key(), &value).as_deref(),
            Some("alice@example.com")
        );
        let expired = issue_cookie(&key(), "alice", unix_now() - 1);
        assert_eq!(check_cookie(&key(), &expired), None);
    }

    #[test]
    fn a_changed_subject_or_expiry_or_another_key_fails() {
        let value = issue_cookie(&key(), "alice", unix_now() + 60);
        let mallory = URL_SAFE_NO_PAD.encode("mallory");
        let (_, rest) = value.split_once('.').unwrap();
        assert_eq!(check_cookie(&key(), &format!("{mallory}.{rest}")), None);
        let parts: Vec<&str> = value.split('.').collect();
        let longer = format!("{}.{}.{}", parts[0], unix_now() + 9999, parts[2]);
        assert_eq!(check_cookie(&key(), &longer), None);
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another key of thirty-two bytes!");
        assert_eq!(check_cookie(&other, &value), None);
        assert_eq!(check_cookie(&key(), "garbage"), None);
    }

    #[test]
    fn cookie_changes_need_the_dashboard_header_and_the_same_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, "ops.example.com".parse().unwrap());
        assert!(!from_the_dashboard(&headers));
        headers.insert(UI_HEADER, UI_HEADER_VALUE.parse().unwrap());
        assert!(from_the_dashboard(&headers));
        headers.insert(
            http::header::ORIGIN,
            "https://ops.example.com".parse().unwrap(),
        );
        assert!(from_the_dashboard(&headers));
        headers.insert(
            http::header::ORIGIN,
            "https://evil.example.com".parse().unwrap(),
        );
        assert!(!from_the_dashboard(&headers));
    }

    #[test]
    fn the_cookie_is_secure_except_on_plain_loopback() {
        let with = |host: &str, proto: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, host.parse().unwrap());
            if let Some(proto) = proto {
                headers.insert("x-forwarded-proto", proto.parse().unwrap());
            }
            wants_secure_cookie(&headers)
        };
        assert!(!with("127.0.0.1:8080", None));
        assert!(!with("localhost:8080", None));
        assert!(with("127.0.0.1:8080", Some("https")));
        assert!(with("ops.example.com", None));
    }
}
