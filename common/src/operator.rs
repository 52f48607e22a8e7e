//! The operator credential. Operator surfaces (`/metrics`, `/regions`, fleet
//! views) show the whole fleet, so they answer only the bearer token the
//! operator configured (`BERTH_OPERATOR_TOKEN`), compared in constant time;
//! a user's token, a session token or no token gets a 401. Without a
//! configured token they answer nobody.

use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::{bearer, ApiError};

/// Shortest operator token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_LEN: usize = 24;

#[derive(Clone)]
pub struct OperatorCredential {
    /// SHA-256 of the token: equal-length comparison whatever was sent.
    token_sha256: Option<[u8; 32]>,
}

impl std::fmt::Debug for OperatorCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorCredential")
            .field("configured", &self.token_sha256.is_some())
            .finish()
    }
}

impl OperatorCredential {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token_sha256: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// Ok when the request carries the operator token.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        if self.token_sha256.is_none() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "OPERATOR_ONLY",
                "this operator surface is off: the service has no BERTH_OPERATOR_TOKEN",
            ));
        }
        let refused = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "OPERATOR_ONLY",
                "this is an operator surface: send the operator token (BERTH_OPERATOR_TOKEN) as `Authorization: Bearer <token>`",
            )
        };
        let sent = bearer(req).map_err(|_| refused())?;
        if self.matches(&sent) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// Whether `token` is the operator token (false when none is configured).
    pub fn matches(&self, token: &str) -> bool {
        let Some(expected) = &self.token_sha256 else {
            return false;
        };
        let sent: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        bool::from(sent.ct_eq(expected))
    }
}

/// clap value parser for the token: long enough, and printable (it travels
/// in a header).
pub fn parse_token(s: &str) -> Result<String, String> {
    if s.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the operator token is {} characters; use at least {MIN_TOKEN_LEN} random ones (e.g. openssl rand -hex 24)",
            s.len()
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the operator token must be visible ASCII (it is sent in a header)".to_owned());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri("/metrics");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_the_operator_token_passes() {
        let token = "an-operator-token-of-enough-length";
        let credential = OperatorCredential::new(Some(token));
        assert!(credential
            .check(&request(Some(&format!("Bearer {token}"))))
            .is_ok());
        for refused in [None, Some("Bearer wrong"), Some("Basic abc"), Some(token)] {
            let error = credential.check(&request(refused)).unwrap_err();
            assert_eq!(error.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        }
        let off = OperatorCredential::new(None);
        let error = off
            .check(&request(Some(&format!("Bearer {token}"))))
            .unwrap_err();
        assert!(error.message.contains("BERTH_OPERATOR_TOKEN"));
        assert!(!format!("{credential:?}").contains(token));
    }

    #[test]
    fn short_or_invisible_tokens_are_refused() {
        assert!(parse_token("short").is_err());
        assert!(parse_token("a token with spaces in it, long enough").is_err());
        assert!(parse_token("0123456789abcdef0123456789abcdef").is_ok());
    }
}
