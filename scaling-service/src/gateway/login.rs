//! Logging a browser in to one session address: `/_berth/login` exchanges the
//! session token (a POSTed form) or a one-time code (from
//! `POST /sessions/<id>/login-code`, so no token sits in a URL) for a cookie
//! the browser sends to that exact hostname only (`__Host-` prefix: Secure,
//! Path=/, no Domain), HttpOnly and SameSite=Strict, then sends the browser on
//! to a path of the same hostname.

use std::time::Duration;

use berth_common::auth::{new_session_token, token_matches, token_sha256_hex};
use berth_common::grant::unix_now;
use berth_common::http::ApiError;
use berth_common::SessionId;
use http::{HeaderMap, StatusCode};
use ring::hmac;
use sqlx::PgPool;

use super::address::Address;
use super::route::Route;

pub const COOKIE_NAME: &str = "__Host-berth";
pub const LOGIN_PATH: &str = "/_berth/login";
/// How long a login code can be spent.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// `<expiry>.<hex HMAC(label, token hash, expiry)>`: bound to one hostname
/// label (session and port), to the session's current token, and to time.
pub fn issue_cookie(
    key: &hmac::Key,
    address: &Address,
    token_sha256: &str,
    lifetime: Duration,
) -> String {
    let expiry = unix_now() + lifetime.as_secs();
    let tag = hmac::sign(
        key,
        cookie_message(&address.label, token_sha256, expiry).as_bytes(),
    );
    format!("{expiry}.{}", hex::encode(tag.as_ref()))
}

fn cookie_message(label: &str, token_sha256: &str, expiry: u64) -> String {
    format!("berth-gateway-v1|{label}|{token_sha256}|{expiry}")
}

/// Why a request's cookie does not let it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieRefused {
    Missing,
    /// Not signed for this hostname and token: another session's, another
    /// port's, forged, or from before the token was re-issued.
    NotForThisAddress,
    Expired,
}

pub fn check_cookie(
    key: &hmac::Key,
    headers: &HeaderMap,
    address: &Address,
    token_sha256: &str,
) -> Result<(), CookieRefused> {
    let value =
        berth_common::http::find_cookie(headers, COOKIE_NAME).ok_or(CookieRefused::Missing)?;
    let (expiry, tag) = value
        .split_once('.')
        .ok_or(CookieRefused::NotForThisAddress)?;
    let (Ok(expiry), Ok(tag)) = (expiry.parse::<u64>(), hex::decode(tag)) else {
        return Err(CookieRefused::NotForThisAddress);
    };
    hmac::verify(
        key,
        cookie_message(&address.label, token_sha256, expiry).as_bytes(),
        &tag,
    )
    .map_err(|_| CookieRefused::NotForThisAddress)?;
    if expiry <= unix_now() {
        return Err(CookieRefused::Expired);
    }
    Ok(())
}

/// Removes the gateway's cookie (and only it) before a request goes on.
pub fn strip_cookie(headers: &mut HeaderMap) {
    berth_common::http::remove_cookie(headers, COOKIE_NAME)
}

pub fn set_cookie(value: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        lifetime.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// What a login request sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoginForm {
    pub token: Option<String>,
    pub code: Option<String>,
    pub next: Option<String>,
}

pub fn parse_form(bytes: &[u8]) -> LoginForm {
    let mut form = LoginForm::default();
    for (key, value) in form_urlencoded::parse(bytes) {
        let slot = match key.as_ref() {
            "token" => &mut form.token,
            "code" => &mut form.code,
            "next" => &mut form.next,
            _ => continue,
        };
        *slot = Some(value.into_owned());
    }
    form
}

/// Where to send the browser after login: a path of this same hostname
/// (never another host: `//evil.example` and `/\evil.example` are refused).
pub fn next_path(next: Option<&str>) -> Result<String, ApiError> {
    let next = next.unwrap_or("/");
    let same_host = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 2048
        && next.bytes().all(|b| b.is_ascii_graphic());
    if same_host {
        Ok(next.to_owned())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_NEXT",
            "next must be a path on this host, starting with a single /",
        ))
    }
}

/// The answer to a login: sets the cookie, then moves the browser on with a
/// same-origin navigation (a redirect would keep the cross-site origin of a
/// login link, and SameSite=Strict would then withhold the new cookie).
pub fn continue_page(next: &str) -> String {
    let next = html_escape(next);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={next}\"><title>Berth</title></head><body><a href=\"{next}\">Continue</a></body></html>\n"
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

/// Whether `form` proves ownership of the session: its token, or a one-time
/// code issued for it (spent here, on whichever replica serves the login).
pub async fn proves_owner(
    db: &PgPool,
    form: &LoginForm,
    address: &Address,
    route: &Route,
) -> Result<bool, sqlx::Error> {
    if let (Some(token), Some(hash)) = (&form.token, &route.token_sha256) {
        return Ok(token_matches(token, hash));
    }
    let Some(code) = &form.code else {
        return Ok(false);
    };
    let spent: Option<uuid::Uuid> = sqlx::query_scalar(
        "DELETE FROM login_codes WHERE code_sha256 = $1 AND expires_at > now() RETURNING session_id",
    )
    .bind(token_sha256_hex(code))
    .fetch_optional(db)
    .await?;
    Ok(spent == Some(address.session.0))
}

/// A one-time login code for the session (its owner checked by the caller).
pub async fn new_code(db: &PgPool, session: SessionId) -> Result<String, sqlx::Error> {
    let code = new_session_token();
    // Spent and expired codes go as new ones come: the table stays small.
    sqlx::query("DELETE FROM login_codes WHERE expires_at < now()")
        .execute(db)
        .await?;
    sqlx::query(
        "INSERT INTO login_codes (code_sha256, session_id, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(&code.sha256_hex)
    .bind(session.0)
    .bind(CODE_LIFETIME.as_secs_f64())
    .execute(db)
    .await?;
    Ok(code.token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn address(label_suffix: &str) -> Address {
        let id = SessionId(uuid::Uuid::new_v4());
        Address {
            session: id,
            port: None,
            label: format!("{id}{label_suffix}"),
            authority: format!("{id}{label_suffix}.gw.test"),
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=1; {COOKIE_NAME}={value}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn a_cookie_opens_only_its_own_hostname_with_the_current_token() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[3; 32]);
        let (a, b) = (address(""), address(""));
        let value = issue_cookie(&key, &a, "hash-1", Duration::from_secs(60));
        assert_eq!(
            check_cookie(&key, &with_cookie(&value), &a, "hash-1"),
            Ok(())
        );
        assert_eq!(
            check_cookie(&key, &with_cookie(&value), &b, "hash-1"),
            Err(CookieRefused::NotForThisAddress)
        );
        let a_port = Address {
            label: format!("{}--8081", a.session),
            ..a.clone()
        };
        assert_eq!(
            check_cookie(&key, &with_cookie(&value), &a_port, "hash-1"),
            Err(CookieRefused::NotForThisAddress),
            "another port of the same session is another origin"
        );
        assert_eq!(
            check_cookie(&key, &with_cookie(&value), &a, "hash-2"),
            Err(CookieRefused::NotForThisAddress),
            "a re-issued token"
        );
        let expired = issue_cookie(&key, &a, "hash-1", Duration::ZERO);
        assert_eq!(
            check_cookie(&key, &with_cookie(&expired), &a, "hash-1"),
            Err(CookieRefused::Expired)
        );
        assert_eq!(
            check_cookie(&key, &HeaderMap::new(), &a, "hash-1"),
            Err(CookieRefused::Missing)
        );
    }

    #[test]
    fn only_the_gateway_cookie_is_stripped() {
        let mut headers = with_cookie("v");
        strip_cookie(&mut headers);
        assert_eq!(headers.get(header::COOKIE).unwrap(), "a=1");
    }

    #[test]
    fn next_stays_on_this_host() {
        assert_eq!(next_path(None).unwrap(), "/");
        assert_eq!(next_path(Some("/a/b?c=d")).unwrap(), "/a/b?c=d");
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "a",
            "/a b",
            "/\n",
        ] {
            assert!(next_path(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(!continue_page("/x\"><script>").contains("<script>"));
    }

    #[test]
    fn forms_are_read() {
        assert_eq!(
            parse_form(b"code=c&next=%2Fx&other=1"),
            LoginForm {
                token: None,
                code: Some("c".into()),
                next: Some("/x".into())
            }
        );
    }
}
