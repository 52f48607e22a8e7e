//! Access grants: what the browser gateway hands a host with each request it
//! forwards, instead of the user's session token. A grant names one host, one
//! session and one container port, lives for a minute, and is signed with the
//! control plane's Ed25519 key; a host checks it with the public key it got
//! at registration, so it needs neither the token nor the database.
//!
//! Wire form: `<base64url(payload)>.<base64url(signature)>`, the payload being
//! `berth-grant-v1|<host id>|<session id>|<port>|<expiry, unix seconds>`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::ids::SessionId;

/// The request header a grant travels in, gateway → host.
pub const GRANT_HEADER: &str = "x-berth-grant";
/// How long a grant is good for.
pub const GRANT_LIFETIME: Duration = Duration::from_secs(60);
/// A grant whose expiry lies further ahead than its lifetime and this much
/// clock difference is refused: no signer makes one.
const CLOCK_SKEW: Duration = Duration::from_secs(30);
const VERSION: &str = "berth-grant-v1";

/// What a grant allows: one session's one port on one host, until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub host: String,
    pub session: SessionId,
    pub port: u16,
    /// Unix seconds.
    pub expires: u64,
}

impl Grant {
    fn payload(&self) -> String {
        format!(
            "{VERSION}|{}|{}|{}|{}",
            self.host, self.session, self.port, self.expires
        )
    }

    fn parse(payload: &str) -> Option<Self> {
        let mut fields = payload.split('|');
        if fields.next()? != VERSION {
            return None;
        }
        let grant = Grant {
            host: fields.next()?.to_owned(),
            session: fields.next()?.parse().ok()?,
            port: fields.next()?.parse().ok()?,
            expires: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(grant)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrantKeyError {
    #[error("the grant signing key is not a valid Ed25519 PKCS#8 document")]
    BadPrivateKey,
    #[error("the grant public key is not 32 bytes of URL-safe base64")]
    BadPublicKey,
    #[error("the system random number generator failed")]
    Random,
}

/// Why a host refused a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefused {
    #[error("the access grant is not well formed")]
    Malformed,
    #[error("the access grant's signature is not the control plane's")]
    BadSignature,
    #[error("the access grant has expired")]
    Expired,
    #[error("the access grant is for another host, session or port")]
    WrongTarget,
}

/// The control plane's half: signs grants.
pub struct GrantSigner {
    key: Ed25519KeyPair,
}

impl fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantSigner")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl GrantSigner {
    /// A new private key, as the PKCS#8 document to keep.
    pub fn generate_pkcs8() -> Result<Vec<u8>, GrantKeyError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| GrantKeyError::Random)
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, GrantKeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|key| Self { key })
            .map_err(|_| GrantKeyError::BadPrivateKey)
    }

    /// The public key hosts verify with (URL-safe base64, no padding).
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref())
    }

    pub fn sign(&self, grant: &Grant) -> String {
        let payload = grant.payload();
        let signature = self.key.sign(payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// The host's half: checks grants against the control plane's public key.
#[derive(Clone)]
pub struct GrantVerifier {
    key: UnparsedPublicKey<Vec<u8>>,
}

impl fmt::Debug for GrantVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantVerifier(..)")
    }
}

impl GrantVerifier {
    pub fn from_public_key(encoded: &str) -> Result<Self, GrantKeyError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or(GrantKeyError::BadPublicKey)?;
        Ok(Self {
            key: UnparsedPublicKey::new(&ED25519, bytes),
        })
    }

    /// The grant `value` carries, if the control plane signed it and it has
    /// not expired at `now` (unix seconds). Its target is the caller's check.
    pub fn verify(&self, value: &str, now: u64) -> Result<Grant, GrantRefused> {
        let (payload, signature) = value.split_once('.').ok_or(GrantRefused::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| GrantRefused::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| GrantRefused::Malformed)?;
        self.key
            .verify(&payload, &signature)
            .map_err(|_| GrantRefused::BadSignature)?;
        let grant = std::str::from_utf8(&payload)
            .ok()
            .and_then(Grant::parse)
            .ok_or(GrantRefused::Malformed)?;
        let latest = now + (GRANT_LIFETIME + CLOCK_SKEW).as_secs();
        if grant.expires <= now || grant.expires > latest {
            return Err(GrantRefused::Expired);
        }
        Ok(grant)
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_signer() -> GrantSigner {
        GrantSigner::from_pkcs8(&GrantSigner::generate_pkcs8().unwrap()).unwrap()
    }

    fn grant(expires: u64) -> Grant {
        Grant {
            host: "h-1".into(),
            session: SessionId(uuid::Uuid::new_v4()),
            port: 8080,
            expires,
        }
    }

    #[test]
    fn a_signed_grant_verifies_and_says_what_it_allows() {
        let signer = new_signer();
        let verifier = GrantVerifier::from_public_key(&signer.public_key()).unwrap();
        let now = unix_now();
        let g = grant(now + 60);
        assert_eq!(verifier.verify(&signer.sign(&g), now), Ok(g));
    }

    #[test]
    fn forged_expired_and_malformed_grants_are_refused() {
        let signer = new_signer();
        let verifier = GrantVerifier::from_public_key(&signer.public_key()).unwrap();
        let now = unix_now();
        let other = new_signer();
        assert_eq!(
            verifier.verify(&other.sign(&grant(now + 60)), now),
            Err(GrantRefused::BadSignature),
            "signed by another key"
        );
        let good = signer.sign(&grant(now + 60));
        let (_, signature) = good.split_once('.').unwrap();
        let tampered = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(grant(now + 60).payload().replace("8080", "8081"))
        );
        assert_eq!(
            verifier.verify(&tampered, now),
            Err(GrantRefused::BadSignature)
        );
        assert_eq!(
            verifier.verify(&signer.sign(&grant(now)), now),
            Err(GrantRefused::Expired)
        );
        assert_eq!(
            verifier.verify(&signer.sign(&grant(now + 3600)), now),
            Err(GrantRefused::Expired),
            "no signer makes an hour-long grant"
        );
        for junk in ["", ".", "x", "a.b", "!!.!!"] {
            assert!(verifier.verify(junk, now).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(GrantSigner::from_pkcs8(b"not a key").is_err());
        assert!(GrantVerifier::from_public_key("short").is_err());
    }
}
