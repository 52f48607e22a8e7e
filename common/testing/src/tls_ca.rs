//! A certificate authority made for one test run: its root goes into a
//! browser's trust store (see `browser`), and the leaves it issues (e.g. for
//! `*.gw.test`) are served by the HTTPS server under test, so a test sees the
//! same certificate checks a user's browser makes, with nothing switched off.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{Datelike, Days, NaiveDate, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsCaError {
    #[error("making the test certificate {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}; check the directory exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A root CA whose key stays in memory for the life of the test.
pub struct TestCa {
    name: String,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

/// A leaf certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`Issued::write_to`] put the certificate and key.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its subject CN), valid from yesterday (clock
    /// skew between the test and the browser) for ten days.
    pub fn new(name: &str) -> Result<Self, TlsCaError> {
        let generate = |source| TlsCaError::Generate {
            what: format!("CA {name:?}"),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Berth tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, 10);
        let ca_pem = params.self_signed(&key).map_err(generate)?.pem();
        Ok(Self {
            name: name.to_owned(),
            ca_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what a client trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `dns_names` (wildcards allowed, e.g.
    /// `*.gw.test`), signed by this CA, for serverAuth, valid for a few days.
    /// The first name is also the subject CN.
    pub fn issue(&self, dns_names: &[&str]) -> Result<Issued, TlsCaError> {
        let generate = |source| TlsCaError::Generate {
            what: format!("for {dns_names:?} from CA {:?}", self.name),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let names: Vec<String> = dns_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(generate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 4);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (the key 0600), for
    /// servers that load their certificate from files.
    pub fn write_to(&self, dir: &Path, stem: &str) -> Result<IssuedFiles, TlsCaError> {
        let files = IssuedFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        write_file(&files.cert, &self.cert_pem, 0o644)?;
        write_file(&files.key, &self.key_pem, 0o600)?;
        Ok(files)
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsCaError> {
    let write = || {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| TlsCaError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Valid from yesterday's midnight (UTC) to `days` after today's.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let today = Utc::now().date_naive();
    let yesterday = today
        .pred_opt()
        .expect("today is not the first day of time");
    let until = today
        .checked_add_days(Days::new(days))
        .expect("a few days from now is a representable date");
    let (year, month, day) = ymd(yesterday);
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = ymd(until);
    params.not_after = rcgen::date_time_ymd(year, month, day);
}

// Months and days always fit a u8.
fn ymd(date: NaiveDate) -> (i32, u8, u8) {
    (date.year(), date.month() as u8, date.day() as u8)
}
