//! Acting on what the control plane wants of this host, from its watch
//! stream: the snapshot that opens every (re)connect is the truth (the host
//! re-syncs from it: allocations to claim, sessions to end, rows gone, its
//! own status), the events after it are hints. A lost stream costs nothing
//! but time: running sessions keep being served while the host reconnects
//! with jittered backoff. Between snapshots, what the host still owes (a
//! claim or teardown that failed) is retried from the last known states.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_common::host_api::{SessionState, WatchEvent};
use berth_common::{HostStatus, SessionId, SessionStatus};

use crate::control::jittered;
use crate::host::Host;
use crate::session::finish::claim;
use crate::session::teardown::{spawn_teardown, Ending};
use crate::session::{Phase, Session};
use crate::{drain, warm_pool};

/// A session in the table without a row is only suspicious once it is older
/// than this: warm sessions enter the table just before their row.
const ROW_GRACE: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub async fn run(host: Arc<Host>) {
    // The rows as the control plane last described them.
    let mut known: HashMap<SessionId, SessionState> = HashMap::new();
    let mut pause = FIRST_RETRY;
    let mut periodic = tokio::time::interval(host.config.resync_period());
    periodic.tick().await;
    loop {
        let opened = tokio::select! {
            _ = host.stop.cancelled() => return,
            opened = host.control.watch() => opened,
        };
        match opened {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    _ = host.stop.cancelled() => return,
                    _ = periodic.tick() => {
                        act_on(&host, &known);
                        continue;
                    }
                    next = stream.next() => next,
                };
                match next {
                    Ok(Some(event)) => {
                        if matches!(event, WatchEvent::Snapshot { .. }) {
                            host.metrics.control_connected.set(1);
                            pause = FIRST_RETRY;
                        }
                        apply(&host, &mut known, event).await;
                    }
                    Ok(None) => {
                        tracing::warn!("the control plane ended the watch stream; reconnecting");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the watch stream broke; reconnecting");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot open the watch stream; retrying"),
        }
        host.metrics.control_connected.set(0);
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tokio::time::sleep(jittered(pause)) => {}
        }
        pause = (pause * 2).min(MAX_RETRY);
    }
}

async fn apply(host: &Arc<Host>, known: &mut HashMap<SessionId, SessionState>, event: WatchEvent) {
    match event {
        WatchEvent::Snapshot {
            host: state,
            sessions,
        } => {
            act_on_status(host, Some(state.status));
            *known = sessions.into_iter().map(|s| (s.id, s)).collect();
            warm_pool::refresh_runtime(host).await;
            act_on(host, known);
            end_sessions_without_rows(host, known);
            host.refill.notify_one();
        }
        WatchEvent::Session(state) => {
            known.insert(state.id, state.clone());
            act_on_session(host, &state);
        }
        WatchEvent::SessionDeleted { id } => {
            known.remove(&id);
        }
        WatchEvent::Host { status } => act_on_status(host, status),
        WatchEvent::Runtime { name } if name == host.runtime().name => {
            let host = host.clone();
            host.tasks
                .clone()
                .spawn(async move { warm_pool::refresh_runtime(&host).await });
        }
        WatchEvent::Runtime { .. } => {}
    }
}

/// UNREACHABLE is the scaler's doubt, not an order: the next heartbeat
/// clears it. Anything past ACTIVE, or no row at all, ends the host.
fn act_on_status(host: &Arc<Host>, status: Option<HostStatus>) {
    match status {
        Some(HostStatus::Active | HostStatus::Unreachable) => {}
        Some(_) | None => drain::start(host),
    }
}

/// Does what the rows ask of this host's sessions (each step is idempotent).
fn act_on(host: &Arc<Host>, known: &HashMap<SessionId, SessionState>) {
    for state in known.values() {
        act_on_session(host, state);
    }
}

fn act_on_session(host: &Arc<Host>, state: &SessionState) {
    match (host.session(state.id), state.status) {
        (Some(session), SessionStatus::Allocated) => spawn_claim(host, session),
        (Some(session), SessionStatus::Dying) => {
            spawn_teardown(host, session, Ending::ended("ended through the scaler"));
        }
        // A DYING row whose session this daemon no longer has: its teardown
        // got as far as the container; finish it.
        (None, SessionStatus::Dying) => {
            let (host, id) = (host.clone(), state.id);
            host.tasks.clone().spawn(async move {
                if let Err(error) = host.control.ended(id).await {
                    tracing::warn!(session = %id, %error, "removing a dead session's row failed; retrying later");
                }
            });
        }
        _ => {}
    }
}

/// Sessions this daemon serves whose rows are gone (an operator deleted
/// them): nobody can reach them any more.
fn end_sessions_without_rows(host: &Arc<Host>, known: &HashMap<SessionId, SessionState>) {
    for session in host.sessions() {
        let settled = session.created_at.elapsed() > ROW_GRACE;
        if !known.contains_key(&session.id)
            && settled
            && !matches!(*session.phase(), Phase::Dying(_))
        {
            spawn_teardown(host, session, Ending::ended("its row was deleted"));
        }
    }
}

fn spawn_claim(host: &Arc<Host>, session: Arc<Session>) {
    let host2 = host.clone();
    host.tasks.spawn(async move {
        if let Err(error) = claim(&host2, &session, None).await {
            tracing::error!(session = %session.id, %error, "claiming an allocated session failed; retried from the last known rows");
        }
    });
}
