//! The daemon's shared state: who it is, its handles to the control plane
//! and Docker, its resource tables and its sessions. One `Arc<Host>` is passed to
//! every task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::resources::gpus::GpuAllocator;
use berth_common::grant::GrantVerifier;
use berth_common::{HostId, SessionId};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::ControlPlane;
use crate::docker::DockerEngine;
use crate::metrics::Metrics;
use crate::proxy::cookie::CookieSigner;
use crate::resources::volumes::UserData;
use crate::resources::{PortAllocator, TtyAllocator};
use crate::runtime::RuntimeSpec;
use crate::session::Session;

#[derive(Debug)]
pub struct Resources {
    pub ttys: TtyAllocator,
    pub ports: PortAllocator,
    pub gpus: GpuAllocator,
}

#[derive(Debug)]
pub struct Host {
    pub config: Config,
    pub id: HostId,
    pub region: String,
    /// The host API: everything the fleet's state says about this host.
    pub control: Arc<ControlPlane>,
    pub docker: DockerEngine,
    /// The runtime new warm sessions are made of; replaced when its row changes.
    runtime: RwLock<Arc<RuntimeSpec>>,
    pub uinput_enabled: bool,
    pub capacity: i32,
    pub metrics: Metrics,
    /// Where users' persistent data lives, if this host mounts any.
    pub user_data: Option<UserData>,
    /// Signs and checks the proxy's login cookies.
    pub cookies: CookieSigner,
    /// Checks the access grants the control plane's browser gateway sends.
    pub grants: Option<GrantVerifier>,
    resources: Mutex<Resources>,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// Warm containers being created right now (not yet in `sessions`).
    pub warming: AtomicUsize,
    /// Poked whenever the warm pool may be short.
    pub refill: Notify,
    /// When EC2 takes this instance back (a spot interruption notice).
    interruption: std::sync::OnceLock<chrono::DateTime<chrono::Utc>>,
    /// True once the host drains: no new warm sessions, no new allocations.
    pub draining: watch::Sender<bool>,
    /// Cancelled when the daemon stops (SIGTERM or the end of a drain).
    pub stop: CancellationToken,
    /// Cancelled when a drain has finished: the host is over.
    pub drained: CancellationToken,
    /// Every task the daemon spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl Host {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        id: HostId,
        region: String,
        control: Arc<ControlPlane>,
        docker: DockerEngine,
        runtime: RuntimeSpec,
        uinput_enabled: bool,
        capacity: i32,
        user_data: Option<UserData>,
        cookies: CookieSigner,
        grants: Option<GrantVerifier>,
        gpus: Vec<String>,
    ) -> Self {
        let resources = Resources {
            ttys: TtyAllocator::new(config.tty_range.0.clone()),
            ports: PortAllocator::new(config.port_range.0.clone()),
            gpus: GpuAllocator::new(gpus),
        };
        Self {
            config,
            id,
            region,
            control,
            docker,
            runtime: RwLock::new(Arc::new(runtime)),
            uinput_enabled,
            capacity,
            metrics: Metrics::new(),
            user_data,
            cookies,
            grants,
            resources: Mutex::new(resources),
            sessions: Mutex::new(HashMap::new()),
            warming: AtomicUsize::new(0),
            refill: Notify::new(),
            interruption: std::sync::OnceLock::new(),
            draining: watch::channel(false).0,
            stop: CancellationToken::new(),
            drained: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// When EC2 takes this instance back, if it said so.
    pub fn interruption(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.interruption.get().copied()
    }

    /// Records the interruption notice's time; false if one was recorded.
    pub fn set_interruption(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        self.interruption.set(at).is_ok()
    }

    pub fn runtime(&self) -> Arc<RuntimeSpec> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_runtime(&self, runtime: Arc<RuntimeSpec>) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = runtime;
    }

    /// The resource tables, locked. Never held across an `.await`.
    pub fn resources(&self) -> MutexGuard<'_, Resources> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn table(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session(&self, id: SessionId) -> Option<Arc<Session>> {
        self.table().get(&id).cloned()
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.table().values().cloned().collect()
    }

    pub fn insert_session(&self, session: Arc<Session>) {
        self.table().insert(session.id, session);
    }

    pub fn remove_session(&self, id: SessionId) -> Option<Arc<Session>> {
        self.table().remove(&id)
    }

    /// Sessions by phase name, for heartbeats, metrics and the pool.
    pub fn count(&self, phase: &str) -> usize {
        self.table()
            .values()
            .filter(|s| s.phase().name() == phase)
            .count()
    }

    pub fn session_count(&self) -> usize {
        self.table().len()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn warming(&self) -> usize {
        self.warming.load(Ordering::SeqCst)
    }
}
