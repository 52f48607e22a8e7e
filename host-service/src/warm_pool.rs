//! Keeps `free_slots` warm sessions: whenever poked (a slot freed, a session
//! claimed) or every few seconds, it creates what is missing, a few at a time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use berth_common::SessionId;

use crate::host::Host;
use crate::runtime::RuntimeSpec;
use crate::session::spawn::spawn_warm;
use crate::session::teardown::{spawn_teardown, Ending};
use crate::session::Phase;

/// Re-check this often even without a poke (a missed hint, a failed spawn).
const RECHECK: Duration = Duration::from_secs(5);
/// Pause after failed spawns, growing to a minute, so a missing image is not a busy loop.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Pause while the control plane cannot say how many slots are free. Not
/// backed off: the pool must refill as soon as it is back, not up to a
/// minute later.
const CONTROL_PLANE_RETRY: Duration = Duration::from_secs(1);

/// What one refill pass came to.
enum Refill {
    Done,
    ControlPlaneUnavailable,
    SpawnsFailed,
}

pub async fn run(host: Arc<Host>) {
    let mut backoff = Duration::ZERO;
    loop {
        if host.stop.is_cancelled() || host.is_draining() {
            return;
        }
        let wait = match refill_once(&host).await {
            Refill::Done => {
                backoff = Duration::ZERO;
                RECHECK
            }
            Refill::ControlPlaneUnavailable => CONTROL_PLANE_RETRY,
            Refill::SpawnsFailed => {
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                backoff
            }
        };
        let mut draining = host.draining.subscribe();
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = draining.changed() => {}
            _ = host.refill.notified(), if backoff.is_zero() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How many warm sessions are missing: the host's free slots minus those
/// already warm or warming, bounded by capacity.
async fn refill_once(host: &Arc<Host>) -> Refill {
    let warm = host.count("WAITING");
    host.metrics.warm_sessions.set(warm as i64);
    let room = (host.capacity as usize).saturating_sub(host.session_count() + host.warming());
    if room == 0 {
        return Refill::Done;
    }
    // Only asked when there is room: the common case costs the control plane nothing.
    let free_slots = match host.control.status().await {
        Ok(state) => state.free_slots.max(0) as usize,
        Err(error) => {
            tracing::warn!(%error, "reading free slots failed; retrying");
            return Refill::ControlPlaneUnavailable;
        }
    };
    let missing = free_slots.saturating_sub(warm + host.warming()).min(room);
    if missing == 0 {
        return Refill::Done;
    }
    tracing::debug!(missing, free_slots, warm, "refilling the warm pool");
    let mut spawns = JoinSet::new();
    let mut failures = 0;
    for _ in 0..missing {
        if spawns.len() >= usize::from(host.config.warm_concurrency) {
            failures += usize::from(!matches!(spawns.join_next().await, Some(Ok(true))));
        }
        host.warming.fetch_add(1, Ordering::SeqCst);
        let host = host.clone();
        spawns.spawn(async move {
            let started = std::time::Instant::now();
            let result = spawn_warm(&host).await;
            host.warming.fetch_sub(1, Ordering::SeqCst);
            match result {
                Ok(session) => {
                    host.metrics.spawn_seconds.observe(started.elapsed().as_secs_f64());
                    tracing::info!(session = %session.id, ms = started.elapsed().as_millis() as u64, "warm session ready");
                    true
                }
                Err(error) => {
                    host.metrics.spawn_failures.inc();
                    tracing::error!(%error, "starting a warm session failed");
                    false
                }
            }
        });
    }
    while let Some(result) = spawns.join_next().await {
        failures += usize::from(!matches!(result, Ok(true)));
    }
    host.metrics.warm_sessions.set(host.count("WAITING") as i64);
    if failures > 0 {
        Refill::SpawnsFailed
    } else {
        Refill::Done
    }
}

/// Re-reads this host's runtime row (on its `config` hint and at every
/// resync). When it changed, new warm sessions use the new settings and the
/// warm ones made from the old are replaced; sessions already handed to users
/// keep what they started with. A row this host cannot serve (gone, invalid,
/// a user volume without BERTH_USER_DATA_ROOT) leaves the old settings in
/// place, loudly.
pub async fn refresh_runtime(host: &Arc<Host>) {
    if host.is_draining() {
        return;
    }
    let current = host.runtime();
    match RuntimeSpec::load(&host.control, &current.name).await {
        Ok(fresh) if fresh == *current => {}
        Ok(fresh) if fresh.user_volume.is_some() && host.user_data.is_none() => {
            tracing::error!(
                runtime = fresh.name,
                "the runtime now mounts a user volume but BERTH_USER_DATA_ROOT is not set; keeping its previous settings"
            );
        }
        Ok(fresh) => {
            tracing::info!(
                runtime = fresh.name,
                image = fresh.image,
                "runtime changed; replacing warm sessions"
            );
            host.set_runtime(Arc::new(fresh));
        }
        Err(error) => {
            tracing::error!(%error, "re-reading this host's runtime failed; keeping its previous settings");
        }
    }
    retire_outdated_warm(host).await;
}

/// Tears down warm sessions made from older runtime settings (also those
/// whose spawn raced a change), so the pool refills with current ones.
async fn retire_outdated_warm(host: &Arc<Host>) {
    let current = host.runtime();
    let stale: Vec<SessionId> = host
        .sessions()
        .iter()
        .filter(|s| matches!(*s.phase(), Phase::Waiting) && *s.runtime != *current)
        .map(|s| s.id)
        .collect();
    if stale.is_empty() {
        return;
    }
    // Only rows still WAITING: one the scaler allocated meanwhile is its user's now.
    let retired = match host.control.retire(stale).await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(%error, "retiring outdated warm sessions failed; the next resync retries");
            return;
        }
    };
    for id in retired {
        if let Some(session) = host.session(id) {
            spawn_teardown(host, session, Ending::ended("its runtime changed"));
        }
    }
}
