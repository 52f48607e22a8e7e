//! The gateway's own TLS: a certificate chain and key given as PEM files (a
//! wildcard for `*.<domain>`), read again whenever either file changes, so a
//! renewal (certbot, cert-manager, a secrets sync) needs no restart. A file
//! that cannot be read or parsed keeps the previous pair in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("the key in {path} cannot sign: {why}")]
    BadKey { path: PathBuf, why: String },
}

#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(cert_path)?.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(CertError::NoCertificate(cert_path.to_owned()));
    }
    let key = rustls_pemfile::private_key(&mut read(key_path)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey(key_path.to_owned()))?;
    let signing = berth_common::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::BadKey {
            path: key_path.to_owned(),
            why: e.to_string(),
        })?;
    Ok(CertifiedKey::new(certs, signing))
}

impl ReloadingCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let stamp = (modified(cert_path), modified(key_path));
        let pair = load(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            stamp: RwLock::new(stamp),
        })
    }

    /// Reads the files again if they changed since the last read.
    pub fn reload_if_changed(&self) {
        let stamp = (modified(&self.cert_path), modified(&self.key_path));
        if *self.stamp.read().unwrap_or_else(|p| p.into_inner()) == stamp {
            return;
        }
        match load(&self.cert_path, &self.key_path) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
                tracing::info!(cert = %self.cert_path.display(), "gateway certificate reloaded");
            }
            // Half-written files during a renewal: try again next time.
            Err(error) => {
                tracing::warn!(%error, "the gateway certificate changed but cannot be loaded; keeping the previous one")
            }
        }
    }

    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(RELOAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }

    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(berth_common::tls::bulk_provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        // The gateway relays bulk traffic: its cheaper suite first.
        config.ignore_client_order = true;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testing::tls_ca::TestCa;

    fn leaf_der(pair: &CertifiedKey) -> Vec<u8> {
        pair.cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("berth-gw-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("reload test CA").unwrap();
        let first = ca
            .issue(&["*.gw.test"])
            .unwrap()
            .write_to(&dir, "gw")
            .unwrap();
        let cert = ReloadingCert::load(&first.cert, &first.key).unwrap();
        let served = || leaf_der(&cert.current.read().unwrap());
        let before = served();
        cert.reload_if_changed();
        assert_eq!(served(), before, "unchanged files are not read again");

        // A renewal writes new files (their mtimes set apart explicitly).
        ca.issue(&["*.gw.test"])
            .unwrap()
            .write_to(&dir, "gw")
            .unwrap();
        let stamp = SystemTime::now() + Duration::from_secs(1);
        for path in [&first.cert, &first.key] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(stamp)
                .unwrap();
        }
        cert.reload_if_changed();
        let renewed = served();
        assert_ne!(renewed, before, "the renewed certificate is served");

        // Half-written files keep the last good pair in use.
        std::fs::write(&first.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
        let stamp = stamp + Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&first.cert)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        cert.reload_if_changed();
        assert_eq!(served(), renewed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_keyless_files_are_refused_at_start() {
        let dir = std::env::temp_dir().join(format!("berth-gw-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TestCa::new("ca")
            .unwrap()
            .issue(&["*.gw.test"])
            .unwrap()
            .write_to(&dir, "gw")
            .unwrap();
        assert!(matches!(
            ReloadingCert::load(&dir.join("absent"), &files.key),
            Err(CertError::Read { .. })
        ));
        assert!(matches!(
            ReloadingCert::load(&files.cert, &files.cert),
            Err(CertError::NoKey(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
