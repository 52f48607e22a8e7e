//! The host's TLS identity: a self-signed certificate made with rcgen, kept
//! under the state directory (key 0600), and published by its SHA-256
//! fingerprint. Clients learn the fingerprint from the scaler at assign time
//! and pin it; there is no "verification off" anywhere.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::atomic_file::write_atomically;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the host certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{doing} {path}: {source}; check the state directory exists and is writable by root")]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the stored certificate or key in {0} is unreadable; delete both files to make a new pair"
    )]
    BadPem(PathBuf),
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(
        "invalid certificate fingerprint {0:?}: expected 64 lowercase hex characters (SHA-256)"
    )]
    BadFingerprint(String),
}

/// The host's certificate and key, and the fingerprint clients pin.
#[derive(Clone)]
pub struct HostIdentity {
    pub cert_der: CertificateDer<'static>,
    key_der: Arc<PrivateKeyDer<'static>>,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub sha256_hex: String,
}

impl std::fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostIdentity")
            .field("sha256_hex", &self.sha256_hex)
            .finish_non_exhaustive()
    }
}

pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

const CERT_FILE: &str = "host-cert.pem";
const KEY_FILE: &str = "host-key.pem";

impl HostIdentity {
    /// Loads the pair from `dir`, or makes and stores a new one for `names`
    /// (DNS names or IP addresses). Kept across restarts on purpose: clients of
    /// running sessions have pinned this fingerprint.
    pub fn load_or_generate(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() && key_path.exists() {
            return Self::load(&cert_path, &key_path);
        }
        let identity = Self::generate(names)?;
        identity.store(dir)?;
        Ok(identity)
    }

    /// A new self-signed pair, in memory only.
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names.to_vec())?;
        let cert_der = cert.der().clone();
        let key_der = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        Ok(Self::from_parts(cert_der, key_der))
    }

    fn from_parts(cert_der: CertificateDer<'static>, key_der: PrivateKeyDer<'static>) -> Self {
        let sha256_hex = sha256_hex(&cert_der);
        Self {
            cert_der,
            key_der: Arc::new(key_der),
            sha256_hex,
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| TlsError::Io {
                doing: "reading",
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TlsError::BadPem(cert_path.to_owned()))?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| TlsError::BadPem(key_path.to_owned()))?;
        Ok(Self::from_parts(cert_der, key_der))
    }

    fn store(&self, dir: &Path) -> Result<(), TlsError> {
        let io = |doing, path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Io {
                doing,
                path,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("securing", dir))?;
        let cert_pem = pem("CERTIFICATE", &self.cert_der);
        let key_pem = pem("PRIVATE KEY", self.key_der.secret_der());
        // Key first, so a crash in between leaves no certificate without its key.
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        write_atomically(&key_path, key_pem.as_bytes(), 0o600).map_err(io("writing", &key_path))?;
        write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)
            .map_err(io("writing", &cert_path))?;
        Ok(())
    }

    /// Server configuration for the host API (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], self.key_der.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The crypto provider Berth uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Call first thing in
/// `main`: with more than one provider in the dependency graph rustls cannot
/// choose and panics on first use otherwise.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Berth's provider with AES-128-GCM preferred: for relaying bulk traffic
/// (the browser gateway) it costs less CPU per byte than AES-256-GCM, at a
/// security level no TLS 1.3 deployment considers weak.
pub fn bulk_provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite::*;
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        });
    Arc::new(provider)
}

/// A client configuration that accepts exactly the certificate whose SHA-256
/// is `sha256_hex` (and still checks the handshake signatures against it).
pub fn pinned_client_config(sha256_hex: &str) -> Result<ClientConfig, TlsError> {
    pinned_client_config_with(sha256_hex, provider())
}

/// [`pinned_client_config`] with another provider (e.g. [`bulk_provider`]).
pub fn pinned_client_config_with(
    sha256_hex: &str,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig, TlsError> {
    let pin = sha256_hex.to_ascii_lowercase();
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError::BadFingerprint(sha256_hex.to_owned()));
    }
    let verifier = PinnedCertVerifier {
        pin,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedCertVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The pin replaces name and chain checks: the scaler vouched for this
        // exact certificate, and nothing else is accepted.
        let seen = sha256_hex(end_entity);
        if bool::from(seen.as_bytes().ct_eq(self.pin.as_bytes())) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "host certificate fingerprint {seen} does not match the pinned {}",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-tls-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn key_is_private_and_identity_survives_a_restart() {
        let dir = tempdir().join("tls");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let first = HostIdentity::load_or_generate(&dir, &names).unwrap();
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode, 0o600,
            "the private key must be readable by its owner only"
        );
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let again = HostIdentity::load_or_generate(&dir, &names).unwrap();
        assert_eq!(first.sha256_hex, again.sha256_hex);
        assert_eq!(first.sha256_hex.len(), 64);
        assert_eq!(first.sha256_hex, sha256_hex(&again.cert_der));
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn malformed_pins_are_refused() {
        assert!(pinned_client_config("abc").is_err());
        assert!(pinned_client_config(&"g".repeat(64)).is_err());
        assert!(pinned_client_config(&"A".repeat(64)).is_ok());
    }
}
