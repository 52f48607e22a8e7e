//! The proxy's short-lived login cookie, so a browser (which cannot add an
//! Authorization header to a page load or a WebSocket) can use a session:
//! `<expiry>.<HMAC-SHA256(session id, token hash, expiry)>`, scoped to the
//! session's path. It dies with its expiry, with its session, and as soon as
//! the token is re-issued. The key is per host, kept 0600 next to the TLS key
//! so cookies survive a daemon restart.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_common::atomic_file::write_atomically;
use berth_common::SessionId;
use http::HeaderMap;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

pub const COOKIE_NAME: &str = "berth_proxy";
const KEY_LEN: usize = 32;

pub struct CookieSigner {
    key: hmac::Key,
}

impl fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

impl CookieSigner {
    /// Reads the key at `path`, or makes one (mode 0600).
    pub fn load_or_generate(path: &Path) -> io::Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) if bytes.len() == KEY_LEN => bytes,
            Ok(_) | Err(_) => {
                let mut bytes = vec![0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| io::Error::other("the system RNG failed"))?;
                write_atomically(path, &bytes, 0o600)?;
                bytes
            }
        };
        Ok(Self::from_key(&bytes))
    }

    pub fn from_key(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    fn message(id: SessionId, token_sha256: &str, expiry: u64) -> String {
        format!("berth proxy v1|{id}|{token_sha256}|{expiry}")
    }

    pub fn issue(&self, id: SessionId, token_sha256: &str, lifetime: Duration) -> String {
        let expiry = now_secs() + lifetime.as_secs();
        let tag = hmac::sign(
            &self.key,
            Self::message(id, token_sha256, expiry).as_bytes(),
        );
        format!("{expiry}.{}", hex::encode(tag.as_ref()))
    }

    /// Whether `value` was issued for this session and token and is unexpired.
    pub fn verify(&self, value: &str, id: SessionId, token_sha256: &str) -> bool {
        let Some((expiry, tag)) = value.split_once('.') else {
            return false;
        };
        let (Ok(expiry), Ok(tag)) = (expiry.parse::<u64>(), hex::decode(tag)) else {
            return false;
        };
        expiry > now_secs()
            && hmac::verify(
                &self.key,
                Self::message(id, token_sha256, expiry).as_bytes(),
                &tag,
            )
            .is_ok()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `Set-Cookie` value: only sent back on this session's paths, never to
/// scripts, never over plain HTTP.
pub fn set_cookie(id: SessionId, value: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/sessions/{id}/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
        lifetime.as_secs()
    )
}

/// Our cookie's value in the request's Cookie headers.
pub fn find(headers: &HeaderMap) -> Option<String> {
    berth_common::http::find_cookie(headers, COOKIE_NAME).map(str::to_owned)
}

/// Removes our cookie (and only ours) before a request goes to the app.
pub fn strip(headers: &mut HeaderMap) {
    berth_common::http::remove_cookie(headers, COOKIE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn id() -> SessionId {
        SessionId(uuid::Uuid::new_v4())
    }

    #[test]
    fn cookies_bind_session_token_and_time() {
        let signer = CookieSigner::from_key(&[7; 32]);
        let (a, b) = (id(), id());
        let value = signer.issue(a, "hash-1", Duration::from_secs(60));
        assert!(signer.verify(&value, a, "hash-1"));
        assert!(!signer.verify(&value, b, "hash-1"), "another session");
        assert!(!signer.verify(&value, a, "hash-2"), "a re-issued token");
        assert!(!CookieSigner::from_key(&[8; 32]).verify(&value, a, "hash-1"));
        let expired = signer.issue(a, "hash-1", Duration::ZERO);
        assert!(!signer.verify(&expired, a, "hash-1"));
        let (expiry, tag) = value.split_once('.').unwrap();
        let later = format!("{}.{tag}", expiry.parse::<u64>().unwrap() + 1000);
        assert!(!signer.verify(&later, a, "hash-1"), "a forged expiry");
        for junk in ["", ".", "x.y", "1.zz", "99999999999"] {
            assert!(!signer.verify(junk, a, "hash-1"));
        }
    }

    #[test]
    fn only_our_cookie_is_found_and_stripped() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; berth_proxy=v1".parse().unwrap());
        headers.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(find(&headers).as_deref(), Some("v1"));
        strip(&mut headers);
        assert_eq!(headers.get(header::COOKIE).unwrap(), "a=1; b=2");
        assert_eq!(find(&headers), None);
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, "berth_proxy=v".parse().unwrap());
        strip(&mut only);
        assert!(only.get(header::COOKIE).is_none());
    }
}
