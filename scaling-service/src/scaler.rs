//! The scaler's shared state, passed to every task as `Arc<Scaler>`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_common::auth::token_sha256_hex;
use berth_common::host_api::SessionState;
use berth_common::{HostId, SessionId, SessionStatus};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::assign::{assign, AssignError, AssignRequest, Assigned};
use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::evidence::{Evidence, Silence};
use crate::gateway::Gateway;
use crate::host_api::credentials::KnownCredentials;
use crate::host_api::heartbeats::HeartbeatBatch;
use crate::host_api::hub::Hub;
use crate::keys::ControlKeys;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::provider::Provider;

#[derive(Debug)]
pub struct Scaler {
    pub config: Config,
    pub db: PgPool,
    pub provider: Arc<dyn Provider>,
    pub policy: Arc<dyn Policy>,
    pub auth: Authenticator,
    pub metrics: Metrics,
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
    /// For how long heartbeat silence is evidence (see `evidence`).
    pub evidence: Arc<Evidence>,
    /// Each region's silence as its last liveness pass judged it.
    silence: Mutex<HashMap<String, Silence>>,
    /// Wakes each region's controller (bounded: one pending wake is enough).
    controllers: Mutex<HashMap<String, mpsc::Sender<()>>>,
    /// Launches this process is making right now; others PENDING are a crash's leftovers.
    launching: Mutex<HashSet<Uuid>>,
    /// Admission control for assigns (BERTH_ASSIGN_CONCURRENCY).
    assign_permits: tokio::sync::Semaphore,
    /// The host watch streams this replica holds.
    pub(crate) hub: Arc<Hub>,
    /// Heartbeats waiting for the next batched write.
    pub(crate) heartbeats: Arc<HeartbeatBatch>,
    /// Host credentials this replica checked recently.
    pub(crate) credentials: KnownCredentials,
    /// Keys all replicas share (grant signing, gateway cookies).
    pub keys: Arc<ControlKeys>,
    /// The browser gateway, when BERTH_GATEWAY_DOMAIN is set.
    pub gateway: Option<Gateway>,
    /// Audit records waiting for the next batched write.
    pub audit: Arc<AuditLog>,
    /// Wakes the publisher of the hints the database queued (`hints`).
    pub(crate) hints_queued: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scaler {
    pub fn new(
        config: Config,
        db: PgPool,
        provider: Arc<dyn Provider>,
        policy: Arc<dyn Policy>,
        auth: Authenticator,
        keys: Arc<ControlKeys>,
    ) -> Self {
        let gateway = config.gateway_domain.clone().map(|domain| {
            Gateway::new(
                domain,
                std::time::Duration::from_secs(config.gateway_login_secs),
                keys.clone(),
            )
        });
        Self {
            keys,
            gateway,
            db,
            provider,
            policy,
            auth,
            metrics: Metrics::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            evidence: Arc::new(Evidence::default()),
            silence: Mutex::new(HashMap::new()),
            controllers: Mutex::new(HashMap::new()),
            launching: Mutex::new(HashSet::new()),
            assign_permits: tokio::sync::Semaphore::new(config.assign_concurrency as usize),
            hub: Arc::new(Hub::default()),
            heartbeats: Arc::default(),
            credentials: KnownCredentials::default(),
            audit: Arc::default(),
            hints_queued: tokio::sync::Notify::new(),
            config,
        }
    }

    /// Where hosts reach the host API: BERTH_CONTROL_URL, or (filled in at
    /// start) this listener's loopback address.
    pub fn control_url(&self) -> &str {
        self.config.control_url.as_deref().unwrap_or_default()
    }

    /// An assign as the API runs it: admitted by the concurrency limit and
    /// bounded by the assign deadline (`None` when the deadline passed).
    pub async fn assign(
        &self,
        user: &str,
        request: &AssignRequest,
    ) -> Option<Result<Assigned, AssignError>> {
        let work = async {
            let _permit = self.assign_permits.acquire().await.ok();
            assign(&self.db, user, request).await
        };
        let result = tokio::time::timeout(self.config.assign_deadline(), work)
            .await
            .ok();
        if let Some(Ok(assigned)) = &result {
            self.tell_host(user, assigned);
            self.hints_written();
        }
        result
    }

    /// A new allocation goes straight to its host's stream when this replica
    /// holds it, without waiting for the NOTIFY round trip.
    fn tell_host(&self, user: &str, assigned: &Assigned) {
        let (Some(token), SessionStatus::Allocated, Ok(host)) = (
            &assigned.token,
            assigned.status,
            HostId::parse(assigned.host.id.clone()),
        ) else {
            return;
        };
        let state = SessionState {
            id: SessionId(assigned.session_id),
            status: SessionStatus::Allocated,
            user_id: Some(user.to_owned()),
            token_sha256: Some(token_sha256_hex(token)),
        };
        if self.hub.allocated(&host, state) {
            self.metrics.direct_host_events.inc();
        }
    }

    /// A write of this replica queued hints (its triggers did): publish them
    /// as soon as the publisher's spacing allows, not at its next poll.
    pub(crate) fn hints_written(&self) {
        self.hints_queued.notify_one();
    }

    pub fn wake(&self, region: &str) {
        if let Some(tx) = lock(&self.controllers).get(region) {
            let _ = tx.try_send(());
        }
    }

    pub fn wake_all(&self) {
        for tx in lock(&self.controllers).values() {
            let _ = tx.try_send(());
        }
    }

    pub fn controller_regions(&self) -> Vec<String> {
        lock(&self.controllers).keys().cloned().collect()
    }

    pub fn add_controller(&self, region: &str) -> Option<mpsc::Receiver<()>> {
        let mut controllers = lock(&self.controllers);
        if controllers.contains_key(region) {
            return None;
        }
        let (tx, rx) = mpsc::channel(1);
        controllers.insert(region.to_owned(), tx);
        Some(rx)
    }

    /// Dropping the sender ends the region's controller.
    pub fn remove_controller(&self, region: &str) {
        lock(&self.controllers).remove(region);
    }

    pub fn set_silence(&self, region: &str, silence: Silence) {
        let labels = vec![("region".to_owned(), region.to_owned())];
        self.metrics
            .silent_hosts
            .get_or_create(&labels)
            .set(silence.silent_hosts);
        self.metrics
            .mass_silence
            .get_or_create(&labels)
            .set(i64::from(silence.mass_silence_suspected));
        lock(&self.silence).insert(region.to_owned(), silence);
    }

    pub fn silence(&self, region: &str) -> Option<Silence> {
        lock(&self.silence).get(region).copied()
    }

    pub fn begin_launch(&self, id: Uuid) {
        lock(&self.launching).insert(id);
    }

    pub fn end_launch(&self, id: Uuid) {
        lock(&self.launching).remove(&id);
    }

    pub fn is_launching(&self, id: Uuid) -> bool {
        lock(&self.launching).contains(&id)
    }
}
