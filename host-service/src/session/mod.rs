//! One user's container on this host and the state machine that carries it:
//! warm (WAITING) → claimed for its user (CONNECTING) → configured and
//! waiting for the app (finishing) → RUNNING → torn down.

pub mod activity;
pub mod dir;
pub mod facts;
pub mod finish;
pub mod init;
pub mod spawn;
pub mod teardown;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use berth_common::SessionId;

use crate::resources::uinput::SessionInput;
use crate::resources::PortMapping;
use crate::runtime::RuntimeSpec;
use dir::SessionPaths;

/// Who a session belongs to once allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub user_id: String,
    pub token_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Warm: container started, row WAITING, no user yet.
    Waiting,
    /// Claimed for a user (row CONNECTING); waiting for the client's json_transport.
    Connecting(Owner),
    /// config.json written; waiting for the app to be ready.
    Finishing(Owner),
    Running(Owner),
    /// Being torn down; nothing else may happen to it. The owner is kept so
    /// a late client can be told "gone" rather than "forbidden".
    Dying(Option<Owner>),
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Waiting => "WAITING",
            Phase::Connecting(_) => "CONNECTING",
            Phase::Finishing(_) => "CONNECTING",
            Phase::Running(_) => "RUNNING",
            Phase::Dying(_) => "DYING",
        }
    }

    pub fn owner(&self) -> Option<&Owner> {
        match self {
            Phase::Connecting(o) | Phase::Finishing(o) | Phase::Running(o) => Some(o),
            Phase::Dying(o) => o.as_ref(),
            Phase::Waiting => None,
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub runtime: Arc<RuntimeSpec>,
    pub paths: SessionPaths,
    pub tty: Option<u8>,
    pub ports: Vec<PortMapping>,
    pub container_id: String,
    pub container_ip: Option<IpAddr>,
    pub created_at: Instant,
    /// Connections and traffic through the proxy, and the app's pings.
    pub activity: Arc<activity::Activity>,
    input: Mutex<Option<SessionInput>>,
    phase: Mutex<Phase>,
    /// Serializes claims (the ALLOCATED hint and an early json_transport can
    /// race), so a loser sees the winner's phase, not a stale WAITING.
    pub claim_lock: tokio::sync::Mutex<()>,
    /// A teardown is running now. Cleared when one fails, so a later resync
    /// can retry it (the phase stays DYING either way).
    pub tearing_down: std::sync::atomic::AtomicBool,
    /// GPU device ids of this session (its `berth.gpus` label).
    pub gpus: Vec<String>,
    lifetime_ends_at: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    warning: Mutex<Option<facts::EndWarning>>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SessionId,
        runtime: Arc<RuntimeSpec>,
        paths: SessionPaths,
        tty: Option<u8>,
        ports: Vec<PortMapping>,
        container_id: String,
        container_ip: Option<IpAddr>,
        input: Option<SessionInput>,
        phase: Phase,
    ) -> Self {
        Self {
            id,
            runtime,
            paths,
            tty,
            ports,
            container_id,
            container_ip,
            created_at: Instant::now(),
            activity: Arc::default(),
            input: Mutex::new(input),
            phase: Mutex::new(phase),
            claim_lock: tokio::sync::Mutex::new(()),
            tearing_down: std::sync::atomic::AtomicBool::new(false),
            gpus: Vec::new(),
            lifetime_ends_at: Mutex::new(None),
            warning: Mutex::new(None),
        }
    }

    /// The session with these GPUs (taken from the host's ledger).
    pub fn with_gpus(mut self, gpus: Vec<String>) -> Self {
        self.gpus = gpus;
        self
    }

    /// When the session's lifetime ends (set when it is finished for its user).
    pub fn lifetime_ends_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self
            .lifetime_ends_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_lifetime_ends_at(&self, at: Option<chrono::DateTime<chrono::Utc>>) {
        *self
            .lifetime_ends_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// The end announced to the session, if one is.
    pub fn warning(&self) -> Option<facts::EndWarning> {
        self.warning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records `warning` as announced; whether it differs from the last one.
    pub fn replace_warning(&self, warning: Option<facts::EndWarning>) -> bool {
        let mut current = self.warning.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *current != warning;
        *current = warning;
        changed
    }

    /// The phase, locked. Never held across an `.await`.
    pub fn phase(&self) -> MutexGuard<'_, Phase> {
        // The phase is a plain value: a panic elsewhere cannot leave it half-written.
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner, if the session serves one now (RUNNING): the proxy and
    /// the idle reaper only act on such sessions.
    pub fn running_owner(&self) -> Option<Owner> {
        match &*self.phase() {
            Phase::Running(owner) => Some(owner.clone()),
            _ => None,
        }
    }

    pub fn take_input(&self) -> Option<SessionInput> {
        self.input.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn input_event_nodes(&self) -> Vec<String> {
        let input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        input
            .as_ref()
            .map(|i| {
                i.event_nodes()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}
