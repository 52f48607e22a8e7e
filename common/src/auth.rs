//! Session tokens: 32 random bytes, URL-safe base64, handed to the user once.
//! The database keeps only the lowercase hex SHA-256 of the token string, and
//! hosts compare in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A freshly minted session token and the hash to store.
pub struct NewSessionToken {
    /// Returned to the user exactly once; never stored or logged.
    pub token: String,
    pub sha256_hex: String,
}

impl std::fmt::Debug for NewSessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSessionToken")
            .field("token", &"<redacted>")
            .field("sha256_hex", &self.sha256_hex)
            .finish()
    }
}

pub fn new_session_token() -> NewSessionToken {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let sha256_hex = token_sha256_hex(&token);
    NewSessionToken { token, sha256_hex }
}

/// Lowercase hex SHA-256 of the token string, as stored in `sessions.token_sha256`.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `presented` hashes to `stored_sha256_hex`, compared in constant time.
pub fn token_matches(presented: &str, stored_sha256_hex: &str) -> bool {
    let presented = token_sha256_hex(presented);
    presented
        .as_bytes()
        .ct_eq(stored_sha256_hex.as_bytes())
        .into()
}

/// The token of an `Authorization: Bearer <token>` header value, if well formed.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_distinct() {
        let a = new_session_token();
        let b = new_session_token();
        assert_eq!(a.token.len(), 43);
        assert!(a
            .token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a.token, b.token);
        assert_eq!(a.sha256_hex, token_sha256_hex(&a.token));
    }

    #[test]
    fn only_the_matching_token_verifies() {
        let t = new_session_token();
        assert!(token_matches(&t.token, &t.sha256_hex));
        assert!(!token_matches(&new_session_token().token, &t.sha256_hex));
        assert!(!token_matches("", &t.sha256_hex));
        // The hash of the empty string must not match an empty stored value either.
        assert!(!token_matches("", ""));
    }

    #[test]
    fn known_hash_vector() {
        assert_eq!(
            token_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
