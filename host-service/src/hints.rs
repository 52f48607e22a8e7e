//! Reacting to the database: NOTIFY hints on `host_<id>` for allocations,
//! sessions that must die and host status changes — and a full re-read of
//! this host's rows at start and after every reconnect, because hints sent
//! while disconnected are lost.

use std::sync::Arc;
use std::time::Duration;

use berth_common::db::{Hint, HintListener};
use berth_common::{HostStatus, SessionId, SessionStatus};
use serde::Deserialize;

use crate::host::Host;
use crate::registry;
use crate::session::finish::claim;
use crate::session::teardown::{spawn_teardown, Ending};
use crate::session::{Phase, Session};
use crate::{drain, warm_pool};

/// A session in the table without a row is only suspicious once it is older
/// than this: warm sessions enter the table just before their row.
const ROW_GRACE: Duration = Duration::from_secs(30);

pub async fn run(host: Arc<Host>) {
    let channel = host.id.channel();
    let Some(mut listener) =
        HintListener::connect_until_stopped(&host.db, &[&channel, "config"], &host.stop).await
    else {
        return;
    };
    // Hints can be lost and repairs can fail (Docker away): re-read the rows
    // now and then even when nothing is heard.
    let mut periodic = tokio::time::interval(host.config.resync_period());
    periodic.tick().await;
    loop {
        let hint = tokio::select! {
            _ = host.stop.cancelled() => return,
            hint = listener.recv() => hint,
            _ = periodic.tick() => Hint::Resync,
        };
        match hint {
            Hint::Resync => resync(&host).await,
            Hint::Notification { payload, .. } => handle(&host, &payload),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Payload {
    kind: String,
    id: Option<String>,
    /// `config` hints name the changed row by its key.
    key: Option<String>,
    status: Option<String>,
}

fn handle(host: &Arc<Host>, payload: &str) {
    let Ok(p) = serde_json::from_str::<Payload>(payload) else {
        tracing::warn!(payload, "ignoring a malformed hint");
        return;
    };
    match (p.kind.as_str(), p.status.as_deref()) {
        ("session", Some(status)) => {
            let Some(session) =
                p.id.and_then(|id| id.parse::<SessionId>().ok())
                    .and_then(|id| host.session(id))
            else {
                return;
            };
            match status {
                "ALLOCATED" => spawn_claim(host, session),
                "DYING" | "DELETED" => {
                    spawn_teardown(host, session, Ending::ended("ended through the scaler"));
                }
                _ => {}
            }
        }
        ("runtimes", _) if p.key.as_deref() == Some(host.runtime().name.as_str()) => {
            let host2 = host.clone();
            host.tasks
                .spawn(async move { warm_pool::refresh_runtime(&host2).await });
        }
        ("host", Some("DRAINING")) => drain::start(host),
        ("host", Some("DELETED" | "TERMINATING" | "TERMINATED")) => drain::start(host),
        _ => {}
    }
}

fn spawn_claim(host: &Arc<Host>, session: Arc<Session>) {
    let host2 = host.clone();
    host.tasks.spawn(async move {
        if let Err(error) = claim(&host2, &session, None).await {
            tracing::error!(session = %session.id, %error, "claiming an allocated session failed; the next resync retries");
        }
    });
}

/// Re-reads this host's rows and its runtime, and acts on all of them.
pub async fn resync(host: &Arc<Host>) {
    warm_pool::refresh_runtime(host).await;
    match registry::status(&host.db, &host.id).await {
        // UNREACHABLE is the scaler's doubt, not an order: the next heartbeat clears it.
        Ok(Some((HostStatus::Active | HostStatus::Unreachable, _))) => {}
        Ok(Some(_)) | Ok(None) => drain::start(host),
        Err(error) => {
            tracing::warn!(%error, "resync could not read the host row");
            return;
        }
    }
    let rows: Vec<(SessionId, SessionStatus)> =
        match sqlx::query_as("SELECT id, status FROM sessions WHERE host_id = $1")
            .bind(&host.id)
            .fetch_all(&host.db)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "resync could not read the session rows");
                return;
            }
        };
    for (id, status) in &rows {
        match (host.session(*id), status) {
            (Some(session), SessionStatus::Allocated) => spawn_claim(host, session),
            (Some(session), SessionStatus::Dying) => {
                spawn_teardown(host, session, Ending::ended("ended through the scaler"));
            }
            // A DYING row whose session this daemon no longer has: its
            // teardown got as far as the container; finish it.
            (None, SessionStatus::Dying) => {
                let _ = sqlx::query("DELETE FROM sessions WHERE id = $1 AND status = 'DYING'")
                    .bind(id)
                    .execute(&host.db)
                    .await;
            }
            _ => {}
        }
    }
    for session in host.sessions() {
        let has_row = rows.iter().any(|(id, _)| *id == session.id);
        let settled = session.created_at.elapsed() > ROW_GRACE;
        if !has_row && settled && !matches!(*session.phase(), Phase::Dying(_)) {
            spawn_teardown(host, session, Ending::ended("its row was deleted"));
        }
    }
    host.refill.notify_one();
}
