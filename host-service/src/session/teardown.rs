//! Teardown: stop the container (grace) → remove it → release devices, TTY
//! and ports → remove directories → delete the row, whose trigger frees the
//! slot. Idempotent: only the first caller works, later ones return at once,
//! and every step tolerates "already gone".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_common::host_api::Dying;
use berth_common::SessionOutcome;

use super::{Phase, Session};
use crate::host::Host;

/// Why a session ends: recorded on its row, and in `session_history` once the
/// row is gone, so its user can be told (e.g. REAPED, "idle for 600 s").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub outcome: SessionOutcome,
    pub reason: String,
}

impl Ending {
    pub fn reaped(reason: impl Into<String>) -> Self {
        Self::new(SessionOutcome::Reaped, reason)
    }
    pub fn lifetime(reason: impl Into<String>) -> Self {
        Self::new(SessionOutcome::Lifetime, reason)
    }
    pub fn interrupted(reason: impl Into<String>) -> Self {
        Self::new(SessionOutcome::Interrupted, reason)
    }
    pub fn deleted(reason: impl Into<String>) -> Self {
        Self::new(SessionOutcome::Deleted, reason)
    }
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::new(SessionOutcome::Failed, reason)
    }
    pub fn ended(reason: impl Into<String>) -> Self {
        Self::new(SessionOutcome::Ended, reason)
    }
    fn new(outcome: SessionOutcome, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            reason: reason.into(),
        }
    }
}

/// Tries for a Docker that is briefly unavailable before leaving the session
/// DYING for the next resync to finish.
const DOCKER_ATTEMPTS: u32 = 3;

pub async fn teardown(host: &Arc<Host>, session: &Arc<Session>, ending: &Ending) {
    if session.tearing_down.swap(true, Ordering::SeqCst) {
        return;
    }
    {
        let mut phase = session.phase();
        let owner = phase.owner().cloned();
        *phase = Phase::Dying(owner);
    }
    tracing::info!(session = %session.id, outcome = %ending.outcome, reason = %ending.reason, "tearing down session");
    // The first recorded cause wins (e.g. the owner's delete through the scaler).
    let dying = Dying {
        outcome: ending.outcome,
        reason: ending.reason.clone(),
    };
    if let Err(error) = host.control.dying(session.id, &dying).await {
        tracing::warn!(session = %session.id, %error, "could not mark the session DYING; continuing teardown");
    }
    crate::faults::point("teardown.after_dying");
    if !release(host, session).await {
        // The container may still run: keep its TTY and ports reserved, and
        // let the next resync retry (the row stays DYING).
        session.tearing_down.store(false, Ordering::SeqCst);
        return;
    }
    crate::faults::point("teardown.after_container");
    // The slot is free only once the row is gone: the report must arrive.
    let deleted = host
        .control
        .until_accepted("deleting a session", &host.stop, || {
            host.control.ended(session.id)
        })
        .await;
    if let Err(error) = deleted {
        tracing::error!(session = %session.id, %error, "deleting the session row failed; the next snapshot removes it");
    }
    crate::faults::point("teardown.after_delete");
    host.remove_session(session.id);
    host.metrics.teardowns.inc();
    host.refill.notify_one();
}

/// Removes the container, devices, resources and directories of `session`;
/// false if the container could not be removed (nothing else is released then).
pub async fn release(host: &Host, session: &Session) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match host
            .docker
            .stop_and_remove(&session.container_id, host.config.stop_grace_secs)
            .await
        {
            Ok(()) => break,
            Err(error) if attempt >= DOCKER_ATTEMPTS => {
                tracing::error!(session = %session.id, %error, "removing the session container failed");
                return false;
            }
            Err(error) => {
                tracing::warn!(session = %session.id, %error, attempt, "removing the session container failed; retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
    }
    if let Some(input) = session.take_input() {
        if let Err(error) = input.destroy() {
            tracing::warn!(session = %session.id, %error, "destroying input devices failed");
        }
    }
    {
        let mut resources = host.resources();
        if let Some(tty) = session.tty {
            resources.ttys.release(tty);
        }
        resources.ports.release(&session.ports);
        resources.gpus.release(&session.gpus);
    }
    if let Err(error) = session.paths.remove() {
        tracing::warn!(session = %session.id, %error, "removing session directories failed");
    }
    true
}

/// Runs `teardown` as a daemon task, so it finishes even when the request
/// that asked for it goes away.
pub fn spawn_teardown(
    host: &Arc<Host>,
    session: Arc<Session>,
    ending: Ending,
) -> tokio::task::JoinHandle<()> {
    let host2 = host.clone();
    host.tasks
        .spawn(async move { teardown(&host2, &session, &ending).await })
}
