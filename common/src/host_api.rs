//! The host API's wire types (`/v1/host/…`): what a host and the control
//! plane say to each other, defined once for the side that serves them and
//! the side that calls them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{HostId, HostStatus, SessionId, SessionOutcome, SessionStatus};

/// Where the host API lives on the control plane's listener.
pub const PREFIX: &str = "/v1/host";

/// `POST /v1/host/register`, with the bootstrap token (first time) or the
/// host credential (a restart) as the bearer token: the host's facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub host_id: HostId,
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub public_ip: Option<IpAddr>,
    pub private_ip: Option<IpAddr>,
    pub api_port: u16,
    pub cert_sha256: String,
    pub version: String,
    /// SHA-256 of a credential the host made and stored before registering:
    /// spent with a bootstrap token, it becomes the host credential, so a
    /// lost answer cannot strand the host. `None`: the answer carries one.
    #[serde(default)]
    pub credential_sha256: Option<String>,
    /// The host's GPU device ids (none on a host without GPUs).
    #[serde(default)]
    pub gpus: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// ACTIVE, or DRAINING when the host was told to drain before it came up.
    pub status: HostStatus,
    pub capacity: i32,
    /// The host credential, only when a bootstrap token was spent and the
    /// host sent no `credential_sha256`: it keeps it (0600) and presents it
    /// on every later call.
    pub credential: Option<String>,
    /// The control plane's public key for access grants (see
    /// [`crate::grant`]): the browser gateway's requests carry grants signed
    /// by its private half.
    #[serde(default)]
    pub grant_key: Option<String>,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("status", &self.status)
            .field("capacity", &self.capacity)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("grant_key", &self.grant_key)
            .finish()
    }
}

/// `POST /v1/host/heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub load_average: Option<f32>,
    pub session_count: i32,
}

/// The host's row as it concerns the host (`GET /v1/host/status`, and the
/// answer to a heartbeat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "db", derive(sqlx::FromRow))]
pub struct HostState {
    pub status: HostStatus,
    pub free_slots: i32,
}

/// `POST /v1/host/sessions`: a warm session the host created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmSession {
    pub id: SessionId,
    pub runtime: String,
    pub container_id: String,
    pub tty: Option<i32>,
    /// The session's port mappings as the host describes them to clients.
    pub ports: serde_json::Value,
}

/// `POST /v1/host/sessions/{id}/claim`: with a hash, only an allocation made
/// for that token is claimed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub token_sha256: Option<String>,
}

/// A session as the host must know it: its state and, once allocated, its
/// owner and the SHA-256 of the owner's current token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "db", derive(sqlx::FromRow))]
pub struct SessionState {
    pub id: SessionId,
    pub status: SessionStatus,
    pub user_id: Option<String>,
    pub token_sha256: Option<String>,
}

/// `POST /v1/host/sessions/{id}/running`: the init answer sealed for the
/// owner (base64), if the runtime has an init call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub init_sealed: Option<String>,
}

/// `POST /v1/host/sessions/{id}/warning`: an end announced to a RUNNING
/// session (idle or lifetime), or withdrawn (`ends_at` null: activity
/// cancelled an idle end). Its owner sees it on `GET /sessions/<id>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndNotice {
    pub ends_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `IDLE` or `LIFETIME`.
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// `POST /v1/host/sessions/{id}/login`: a browser's login at the host's
/// proxy, for the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginReport {
    /// The client's address as the proxy saw it.
    pub address: Option<String>,
    /// Whether the token was the session's.
    pub accepted: bool,
}

/// `GET /v1/host/sessions/{id}/init`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedInit {
    pub init_sealed: Option<String>,
}

/// `POST /v1/host/sessions/{id}/dying`: the session is being torn down; the
/// first cause recorded wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dying {
    pub outcome: SessionOutcome,
    pub reason: String,
}

/// `POST /v1/host/sessions/retire`: warm sessions to end; answered with those
/// still WAITING (an allocated one is its user's now).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionIds {
    pub ids: Vec<SessionId>,
}

/// `POST /v1/host/drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainResponse {
    /// Whether this call moved the host to DRAINING.
    pub moved: bool,
}

/// `POST /v1/host/death`: why the daemon is dying, for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeathNotice {
    pub reason: String,
}

/// A runtime's row (`GET /v1/host/runtimes/{name}`), for the host to check
/// and turn into its own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "db", derive(sqlx::FromRow))]
pub struct RuntimeRow {
    pub name: String,
    pub image: String,
    pub ports: serde_json::Value,
    pub env: serde_json::Value,
    pub memory_mib: i32,
    pub cpu_shares: i32,
    pub shm_mib: i32,
    pub needs_tty: bool,
    pub needs_uinput: bool,
    pub readiness: serde_json::Value,
    pub ready_timeout_s: i32,
    pub idle_timeout_s: Option<i32>,
    /// A session ends this long after it started RUNNING (`None`: never).
    #[serde(default)]
    pub max_lifetime_s: Option<i32>,
    /// How long before an idle or lifetime end the session is warned.
    #[serde(default)]
    pub idle_warning_s: Option<i32>,
    pub init: Option<serde_json::Value>,
    pub user_volume: Option<serde_json::Value>,
    pub egress: String,
    /// GPUs per session: `0`, a count, or `all`.
    #[serde(default = "no_gpus")]
    pub gpus: String,
    /// `nvidia` or `cdi:<vendor>/<class>`.
    #[serde(default = "nvidia")]
    pub gpu_driver: String,
}

fn no_gpus() -> String {
    "0".to_owned()
}

fn nvidia() -> String {
    "nvidia".to_owned()
}

/// What `GET /v1/host/watch` streams (server-sent events, `event:` the kind,
/// `data:` this as JSON). The first event is always a snapshot; a host
/// re-syncs from it on every (re)connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    /// Everything the host must act on, as the database has it now.
    Snapshot {
        host: HostState,
        sessions: Vec<SessionState>,
    },
    /// A session was allocated, its token re-issued, or it must end.
    Session(SessionState),
    /// A session's row is gone.
    SessionDeleted { id: SessionId },
    /// The host's status moved (DRAINING, TERMINATING…); `None`: its row is gone.
    Host { status: Option<HostStatus> },
    /// A runtime's settings changed: re-read it.
    Runtime { name: String },
}

impl WatchEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            WatchEvent::Snapshot { .. } => "snapshot",
            WatchEvent::Session(_) => "session",
            WatchEvent::SessionDeleted { .. } => "session_deleted",
            WatchEvent::Host { .. } => "host",
            WatchEvent::Runtime { .. } => "runtime",
        }
    }
}

/// Checks a control-plane URL as hosts use it: `https://…`, or plain
/// `http://` only to a loopback address (a host and control plane on one
/// machine), since the host credential and bootstrap token travel in it.
/// Returns it without a trailing slash.
pub fn parse_control_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| {
        format!("{raw:?} is not a URL ({e}); e.g. https://berth-control.example.com")
    })?;
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match url.scheme() {
        "https" if url.host_str().is_some() => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{raw:?}: plain http is accepted only for a loopback control plane; use https://"
            ))
        }
        _ => return Err(format!("{raw:?}: use https://host[:port]")),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{raw:?}: no query, fragment or user info in the control URL"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_control_url;

    #[test]
    fn control_urls_are_https_or_loopback_http() {
        assert_eq!(
            parse_control_url("https://control.example.com/").unwrap(),
            "https://control.example.com"
        );
        assert_eq!(
            parse_control_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(parse_control_url("http://[::1]:8080").is_ok());
        assert!(parse_control_url("http://localhost:8080").is_ok());
        for bad in [
            "http://10.0.0.5:8080",
            "http://control.example.com",
            "ftp://127.0.0.1",
            "control.example.com",
            "https://user:pw@control.example.com",
            "https://control.example.com/?x=1",
        ] {
            assert!(parse_control_url(bad).is_err(), "{bad}");
        }
    }
}
