//! A runtime's init call: once the app is ready, POST the session's
//! parameters to it and keep its JSON answer (e.g. generated credentials)
//! for the owner only. The answer is sealed (ChaCha20-Poly1305) under a key
//! derived from the session token, which the database never holds: neither
//! the database nor another session's token can open it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth_common::SessionId;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full, Limited};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::runtime::InitCall;
use crate::upstream;

/// Largest init answer kept.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("the container has no address for the init call")]
    NoAddress,
    #[error("init POST {path} did not answer within {0:?}", path = .1)]
    Timeout(Duration, String),
    #[error("init POST {path} failed: {why}")]
    Failed { path: String, why: String },
}

/// POSTs `params` to the runtime's init endpoint; its 2xx answer must be a
/// JSON object of at most 64 KiB.
pub async fn call(
    init: &InitCall,
    ip: Option<IpAddr>,
    params: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, InitError> {
    let addr = SocketAddr::new(ip.ok_or(InitError::NoAddress)?, init.port);
    let failed = |why: String| InitError::Failed {
        path: init.path.clone(),
        why,
    };
    let exchange = async {
        let mut sender = upstream::connect(addr).await.map_err(failed)?;
        let request = Request::post(init.path.as_str())
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "berth-init")
            .body(Full::new(Bytes::from(params.to_string())))
            .map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(failed(format!("answered HTTP {status}")));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
        if !answer.is_object() {
            return Err(failed("the answer is not a JSON object".into()));
        }
        Ok(answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| InitError::Timeout(timeout, init.path.clone()))?
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        CHACHA20_POLY1305.key_len()
    }
}

fn key(token: &str, id: SessionId) -> Option<LessSafeKey> {
    let mut bytes = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, id.0.as_bytes())
        .extract(token.as_bytes())
        .expand(&[b"berth init answer v1"], KeyLen)
        .ok()?
        .fill(&mut bytes)
        .ok()?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?;
    Some(LessSafeKey::new(key))
}

/// `nonce || ciphertext || tag`, or None if the system RNG failed.
pub fn seal(token: &str, id: SessionId, plaintext: &[u8]) -> Option<Vec<u8>> {
    let key = key(token, id)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(id.0.as_bytes()),
        &mut sealed,
    )
    .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Some(out)
}

/// The plaintext, if `token` is the one it was sealed with.
pub fn open(token: &str, id: SessionId, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let key = key(token, id)?;
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(id.0.as_bytes()), &mut buffer)
        .ok()?;
    Some(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sealing_token_and_session_open_it() {
        let id = SessionId(uuid::Uuid::new_v4());
        let sealed = seal("token-a", id, b"{\"password\":\"s3cret\"}").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            open("token-a", id, &sealed).unwrap(),
            b"{\"password\":\"s3cret\"}"
        );
        assert!(open("token-b", id, &sealed).is_none());
        assert!(open("token-a", SessionId(uuid::Uuid::new_v4()), &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open("token-a", id, &tampered).is_none());
        assert!(open("token-a", id, &sealed[..5]).is_none());
    }
}
