//! The control plane, as this host reaches it: the host API (`/v1/host/…`)
//! over HTTPS (plain HTTP only to a loopback control plane). The host holds
//! no database credentials; everything it reads or reports about its row and
//! its sessions goes through here, authenticated by the host credential that
//! registration returned (kept 0600 in the state dir).

mod stream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use berth_common::auth::new_session_token;
use berth_common::host_api::{
    ClaimRequest, DeathNotice, DrainRequest, DrainResponse, Dying, EndNotice, Heartbeat, HostState,
    LoginReport, RegisterRequest, RegisterResponse, Running, RuntimeRow, SealedInit, SessionIds,
    SessionState, WarmSession, PREFIX,
};
use berth_common::SessionId;
use http::{Method, StatusCode};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use stream::WatchStream;

/// Every call but the watch stream is answered within this (the control
/// plane's own database calls are bounded well below it).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long registration keeps asking while the control plane cannot be
/// reached, or answers that it cannot finish just now: past it the daemon
/// exits 1 and its supervisor starts it again.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(5);
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(20);
/// How long a host whose launch the control plane has not recorded yet
/// (RunInstances answered moments ago) keeps asking.
const NOT_RECORDED_PATIENCE: Duration = Duration::from_secs(120);
/// Where the host credential lives under the state dir.
const CREDENTIAL_FILE: &str = "host-credential";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the control plane could not be reached (last tried {url}: {source}); check BERTH_CONTROL_URL and that the control plane runs")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the control plane refused {doing}: {status} {code}: {message}")]
    Refused {
        doing: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("the control plane's answer to {doing} was not understood ({why}); are host and control plane versions compatible?")]
    Malformed { doing: &'static str, why: String },
    #[error("this host has no credential yet ({path} is missing) and no bootstrap token; set BERTH_HOST_TOKEN to the token of its launch, or one from `scaling-service host-token`")]
    NoCredential { path: PathBuf },
    #[error("the host credential file {path}: {source}; BERTH_STATE_DIR must be writable by root")]
    CredentialFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BERTH_CONTROL_CA {path}: {why}; give a PEM file with the CA certificate(s) of the control plane's certificate")]
    Ca { path: PathBuf, why: String },
    #[error("building the control-plane client failed: {0}")]
    Client(String),
}

impl ControlError {
    /// Worth asking again: the control plane or its database was away.
    pub fn is_transient(&self) -> bool {
        match self {
            ControlError::Unreachable { .. } => true,
            ControlError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The refusal's code, if the control plane refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ControlError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A refusal that settles the matter for good: this host is over, or
    /// its identity or configuration is wrong (a restart does not help).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ControlError::NoCredential { .. }
                | ControlError::Ca { .. }
                | ControlError::Client(_)
                | ControlError::CredentialFile { .. }
        ) || matches!(
            self,
            ControlError::Refused {
                status: 401 | 403 | 409,
                ..
            }
        )
    }
}

/// `{"error": {"code": …, "message": …}}`, as every Berth API answers errors.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

/// A client of the host API for one host.
pub struct ControlPlane {
    http: reqwest::Client,
    /// `<url>/v1/host` of each control-plane replica the host was given.
    bases: Vec<String>,
    /// The replica in use; the next one when it cannot be reached.
    current: AtomicUsize,
    credential: RwLock<Option<String>>,
    credential_path: PathBuf,
    bootstrap: Option<String>,
}

/// The credential and the bootstrap token never reach a log.
impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("bases", &self.bases)
            .field("has_credential", &self.has_credential())
            .field("has_bootstrap_token", &self.bootstrap.is_some())
            .finish()
    }
}

impl ControlPlane {
    /// `urls` (one per replica, or one in front of them all) were checked
    /// by the command line: https, or http to loopback.
    pub fn new(
        urls: &[String],
        ca: Option<&Path>,
        state_dir: &Path,
        bootstrap: Option<String>,
    ) -> Result<Self, ControlError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(urls.iter().all(|u| u.starts_with("https://")))
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth-host-service/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca {
            let ca_error = |why: String| ControlError::Ca {
                path: path.to_owned(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no certificate in it".into()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ControlError::Client(e.to_string()))?;
        let credential_path = state_dir.join(CREDENTIAL_FILE);
        let credential = match std::fs::read_to_string(&credential_path) {
            Ok(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ControlError::CredentialFile {
                    path: credential_path,
                    source,
                })
            }
        };
        Ok(Self {
            http,
            bases: urls
                .iter()
                .map(|url| format!("{}{PREFIX}", url.trim_end_matches('/')))
                .collect(),
            current: AtomicUsize::new(0),
            credential: RwLock::new(credential),
            credential_path,
            bootstrap: bootstrap.filter(|t| !t.is_empty()),
        })
    }

    /// Whether this host holds a credential (it registered once).
    pub fn has_credential(&self) -> bool {
        self.credential().is_some()
    }

    fn credential(&self) -> Option<String> {
        self.credential
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers this host: with its credential when it has one (a restart),
    /// else with the bootstrap token, whose answer's credential is stored
    /// before it is used. Keeps asking while the control plane is away or the
    /// launch is not recorded yet, up to a few minutes.
    pub async fn register(
        &self,
        me: &RegisterRequest,
        stop: &CancellationToken,
    ) -> Result<RegisterResponse, ControlError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let answer = self.register_once(me).await;
            let patience = match &answer {
                Err(ControlError::Unreachable { .. }) => UNREACHABLE_PATIENCE,
                Err(error) if error.code() == Some("HOST_NOT_RECORDED") => NOT_RECORDED_PATIENCE,
                Err(error) if error.is_transient() => UNAVAILABLE_PATIENCE,
                _ => Duration::ZERO,
            };
            match answer {
                Err(error) if started.elapsed() + pause < patience => {
                    tracing::warn!(%error, "registration not possible yet; asking again");
                    tokio::select! {
                        _ = stop.cancelled() => return Err(error),
                        _ = tokio::time::sleep(jittered(pause)) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    /// With the credential first (a restart, or a retry whose first answer
    /// was lost); if the control plane does not know it, with the bootstrap
    /// token and the hash of a fresh credential this host made and stored
    /// before sending it, so whatever happens to the answer the host holds
    /// the credential the control plane recorded.
    async fn register_once(&self, me: &RegisterRequest) -> Result<RegisterResponse, ControlError> {
        let doing = "the registration";
        let mut refused = None;
        if let Some(credential) = self.credential() {
            match self
                .send(Method::POST, "/register", Some(me), &credential, doing)
                .await
            {
                Ok(answer) => return decode(answer, doing).await,
                // Not (or no longer) this host's: an operator issued a new
                // bootstrap token, or the first registration never landed.
                Err(
                    error @ ControlError::Refused {
                        status: 401 | 403, ..
                    },
                ) => refused = Some(error),
                Err(error) => return Err(error),
            }
        }
        let Some(bootstrap) = &self.bootstrap else {
            return Err(refused.unwrap_or(ControlError::NoCredential {
                path: self.credential_path.clone(),
            }));
        };
        let fresh = new_session_token();
        self.keep_credential(&fresh.token)?;
        let me = RegisterRequest {
            credential_sha256: Some(fresh.sha256_hex),
            ..me.clone()
        };
        let answer = self
            .send(Method::POST, "/register", Some(&me), bootstrap, doing)
            .await?;
        let answer: RegisterResponse = decode(answer, doing).await?;
        // A control plane that made the credential itself.
        if let Some(credential) = &answer.credential {
            self.keep_credential(credential)?;
        }
        Ok(answer)
    }

    fn keep_credential(&self, credential: &str) -> Result<(), ControlError> {
        berth_common::atomic_file::write_atomically(
            &self.credential_path,
            credential.as_bytes(),
            0o600,
        )
        .map_err(|source| ControlError::CredentialFile {
            path: self.credential_path.clone(),
            source,
        })?;
        *self.credential.write().unwrap_or_else(|p| p.into_inner()) = Some(credential.to_owned());
        Ok(())
    }

    /// Sends `request` (built for a replica's base URL) to the replica in
    /// use, and on to the next ones while a replica cannot be reached.
    async fn to_replicas(
        &self,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ControlError> {
        let mut unreachable = None;
        for _ in 0..self.bases.len() {
            let index = self.current.load(Ordering::Relaxed) % self.bases.len();
            let base = &self.bases[index];
            match request(base).send().await {
                Ok(response) => return Ok(response),
                Err(source) => {
                    let next = (index + 1) % self.bases.len();
                    let _ = self.current.compare_exchange(
                        index,
                        next,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    unreachable = Some(ControlError::Unreachable {
                        url: base.clone(),
                        source,
                    });
                }
            }
        }
        Err(unreachable.expect("at least one control-plane URL"))
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        token: &str,
        doing: &'static str,
    ) -> Result<reqwest::Response, ControlError> {
        let response = self
            .to_replicas(|base| {
                let request = self
                    .http
                    .request(method.clone(), format!("{base}{path}"))
                    .bearer_auth(token)
                    .timeout(CALL_TIMEOUT);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Option<ErrorBody> = response.json().await.ok();
        let (code, message) = body
            .map(|b| (b.error.code, b.error.message))
            .unwrap_or((None, None));
        Err(ControlError::Refused {
            doing,
            status: status.as_u16(),
            code: code.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
            message: message.unwrap_or_default(),
        })
    }

    /// One call with the host credential, its JSON answer decoded.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        doing: &'static str,
    ) -> Result<T, ControlError> {
        let credential = self
            .credential()
            .ok_or_else(|| ControlError::NoCredential {
                path: self.credential_path.clone(),
            })?;
        let response = self.send(method, path, body, &credential, doing).await?;
        decode(response, doing).await
    }

    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<HostState, ControlError> {
        self.call(Method::POST, "/heartbeat", Some(beat), "a heartbeat")
            .await
    }

    pub async fn status(&self) -> Result<HostState, ControlError> {
        self.call::<(), _>(Method::GET, "/status", None, "reading the host's status")
            .await
    }

    /// Asks for this host to drain; whether this call moved it.
    pub async fn drain(&self, reason: &str) -> Result<bool, ControlError> {
        let request = DrainRequest {
            reason: reason.to_owned(),
        };
        let answer: DrainResponse = self
            .call(
                Method::POST,
                "/drain",
                Some(&request),
                "marking the host DRAINING",
            )
            .await?;
        Ok(answer.moved)
    }

    pub async fn terminating(&self) -> Result<HostState, ControlError> {
        self.call::<(), _>(
            Method::POST,
            "/terminating",
            None,
            "marking the host TERMINATING",
        )
        .await
    }

    /// Why the daemon dies, for operators; best effort.
    pub async fn death_notice(&self, reason: &str) {
        let notice = DeathNotice {
            reason: reason.to_owned(),
        };
        let sent: Result<serde_json::Value, _> = self
            .call(Method::POST, "/death", Some(&notice), "the death notice")
            .await;
        if let Err(error) = sent {
            tracing::error!(%error, "could not record the death notice on the host row");
        }
    }

    pub async fn runtime(&self, name: &str) -> Result<Option<RuntimeRow>, ControlError> {
        let path = format!("/runtimes/{}", path_segment(name));
        match self
            .call::<(), _>(Method::GET, &path, None, "reading a runtime")
            .await
        {
            Err(ControlError::Refused { status: 404, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn sessions(&self) -> Result<Vec<SessionState>, ControlError> {
        self.call::<(), _>(
            Method::GET,
            "/sessions",
            None,
            "reading this host's sessions",
        )
        .await
    }

    /// A session's row, `None` when it is gone.
    pub async fn session(&self, id: SessionId) -> Result<Option<SessionState>, ControlError> {
        let path = format!("/sessions/{id}");
        match self
            .call::<(), _>(Method::GET, &path, None, "reading a session")
            .await
        {
            Err(ControlError::Refused { status: 404, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn warm_created(&self, warm: &WarmSession) -> Result<(), ControlError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                "/sessions",
                Some(warm),
                "recording a warm session",
            )
            .await?;
        Ok(())
    }

    /// ALLOCATED → CONNECTING (only an allocation for the token with this
    /// hash, when one is given); `None` when the session is not so allocated.
    pub async fn claim(
        &self,
        id: SessionId,
        token_sha256: Option<String>,
    ) -> Result<Option<SessionState>, ControlError> {
        let path = format!("/sessions/{id}/claim");
        let request = ClaimRequest { token_sha256 };
        match self
            .call(Method::POST, &path, Some(&request), "claiming a session")
            .await
        {
            Err(ControlError::Refused { status: 409, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// CONNECTING → RUNNING with the sealed init answer; false when the
    /// session was ended meanwhile.
    pub async fn running(
        &self,
        id: SessionId,
        init_sealed: Option<&[u8]>,
    ) -> Result<bool, ControlError> {
        let path = format!("/sessions/{id}/running");
        let request = Running {
            init_sealed: init_sealed.map(|b| STANDARD.encode(b)),
        };
        match self
            .call::<_, serde_json::Value>(
                Method::POST,
                &path,
                Some(&request),
                "marking a session RUNNING",
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(ControlError::Refused {
                status: 404 | 409, ..
            }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The session is being torn down (a session already gone is fine).
    pub async fn dying(&self, id: SessionId, dying: &Dying) -> Result<(), ControlError> {
        let path = format!("/sessions/{id}/dying");
        match self
            .call::<_, serde_json::Value>(
                Method::POST,
                &path,
                Some(dying),
                "marking a session DYING",
            )
            .await
        {
            Ok(_) | Err(ControlError::Refused { status: 404, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Announces (or withdraws) a RUNNING session's coming end to its owner
    /// (a session no longer running is fine).
    pub async fn warn_end(&self, id: SessionId, notice: &EndNotice) -> Result<(), ControlError> {
        let path = format!("/sessions/{id}/warning");
        match self
            .call::<_, serde_json::Value>(
                Method::POST,
                &path,
                Some(notice),
                "announcing a session's end",
            )
            .await
        {
            Ok(_) | Err(ControlError::Refused { status: 404, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// A browser logged in (or was refused) at the proxy: for the audit trail
    /// (a session already gone is fine).
    pub async fn login(&self, id: SessionId, report: &LoginReport) -> Result<(), ControlError> {
        let path = format!("/sessions/{id}/login");
        match self
            .call::<_, serde_json::Value>(
                Method::POST,
                &path,
                Some(report),
                "reporting a proxy login",
            )
            .await
        {
            Ok(_) | Err(ControlError::Refused { status: 404, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The session's container is gone: its row goes.
    pub async fn ended(&self, id: SessionId) -> Result<(), ControlError> {
        let path = format!("/sessions/{id}");
        let _: serde_json::Value = self
            .call::<(), _>(Method::DELETE, &path, None, "deleting a session")
            .await?;
        Ok(())
    }

    /// Ends those of `ids` still WAITING; returns them.
    pub async fn retire(&self, ids: Vec<SessionId>) -> Result<Vec<SessionId>, ControlError> {
        let answer: SessionIds = self
            .call(
                Method::POST,
                "/sessions/retire",
                Some(&SessionIds { ids }),
                "retiring warm sessions",
            )
            .await?;
        Ok(answer.ids)
    }

    /// The init answer sealed for the session's owner.
    pub async fn init(&self, id: SessionId) -> Result<Option<Vec<u8>>, ControlError> {
        let path = format!("/sessions/{id}/init");
        let answer: SealedInit = self
            .call::<(), _>(Method::GET, &path, None, "reading a session's init answer")
            .await?;
        answer
            .init_sealed
            .map(|b64| STANDARD.decode(b64))
            .transpose()
            .map_err(|e| ControlError::Malformed {
                doing: "reading a session's init answer",
                why: e.to_string(),
            })
    }

    /// Opens `GET /v1/host/watch`.
    pub async fn watch(&self) -> Result<WatchStream, ControlError> {
        let doing = "opening the watch stream";
        let credential = self
            .credential()
            .ok_or_else(|| ControlError::NoCredential {
                path: self.credential_path.clone(),
            })?;
        let response = self
            .to_replicas(|base| {
                self.http
                    .get(format!("{base}/watch"))
                    .bearer_auth(&credential)
                    .header(http::header::ACCEPT, "text/event-stream")
            })
            .await?;
        if response.status() != StatusCode::OK {
            return Err(ControlError::Refused {
                doing,
                status: response.status().as_u16(),
                code: response
                    .status()
                    .canonical_reason()
                    .unwrap_or("")
                    .to_owned(),
                message: String::new(),
            });
        }
        Ok(WatchStream::new(response))
    }

    /// Repeats `report` until the control plane accepts it, refuses it for
    /// good, or the daemon stops: what a host reports must not be lost to
    /// a control plane that is briefly away.
    pub async fn until_accepted<T, F, Fut>(
        &self,
        doing: &str,
        stop: &CancellationToken,
        mut report: F,
    ) -> Result<T, ControlError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ControlError>>,
    {
        let mut pause = Duration::from_millis(200);
        loop {
            match report().await {
                Err(error) if error.is_transient() && !stop.is_cancelled() => {
                    tracing::warn!(%error, doing, "report not accepted yet; repeating it");
                    tokio::select! {
                        _ = stop.cancelled() => return Err(error),
                        _ = tokio::time::sleep(jittered(pause)) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }
}

async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    doing: &'static str,
) -> Result<T, ControlError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ControlError::Malformed {
            doing,
            why: e.to_string(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ControlError::Malformed {
        doing,
        why: e.to_string(),
    })
}

/// A runtime name as one URL path segment.
fn path_segment(raw: &str) -> String {
    form_urlencoded::byte_serialize(raw.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `base` ± 25 %, so a fleet that lost its control plane together does not
/// come back in lockstep.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let dir = std::env::temp_dir().join(format!("berth-control-debug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CREDENTIAL_FILE), "the-host-credential").unwrap();
        let control = ControlPlane::new(
            &["http://127.0.0.1:1".to_owned()],
            None,
            &dir,
            Some("the-bootstrap-token".to_owned()),
        )
        .unwrap();
        let shown = format!("{control:?}");
        assert!(
            !shown.contains("the-host-credential") && !shown.contains("the-bootstrap-token"),
            "{shown}"
        );
        assert!(shown.contains("has_credential: true"), "{shown}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
