//! Adopt-or-reap at start. A restart (upgrade, crash, systemd) must cost no
//! running session, so the daemon rebuilds its tables from Docker's labels:
//! containers whose row is live are adopted (TTY and ports re-reserved; a
//! claimed session waits for its client's retry), the rest are removed, rows without a container are deleted, and stray session
//! directories are cleaned up.

use std::collections::HashMap;
use std::sync::Arc;

use berth_common::host_api::SessionState;
use berth_common::{SessionId, SessionStatus};

use crate::docker::{label, LABEL_GPUS, LABEL_PORTS, LABEL_RUNTIME, LABEL_SESSION, LABEL_TTY};
use crate::host::Host;
use crate::resources::PortMapping;
use crate::session::dir::SessionPaths;
use crate::session::{Owner, Phase, Session};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: usize,
    pub reaped_containers: usize,
    pub deleted_rows: usize,
    pub removed_dirs: usize,
}

type Row = SessionState;

pub async fn reconcile(host: &Arc<Host>) -> Result<Report, crate::Error> {
    let mut report = Report::default();
    let containers = host.docker.list_host_containers(&host.id).await?;
    let rows: Vec<Row> = host.control.sessions().await?;
    let mut rows: HashMap<SessionId, Row> = rows.into_iter().map(|r| (r.id, r)).collect();

    let mut strays: Vec<(String, Option<SessionId>)> = vec![];
    for container in containers {
        let Some(container_id) = container.id.clone() else {
            continue;
        };
        let running = container
            .state
            .as_ref()
            .is_some_and(|s| s.to_string() == "running");
        let id = label(&container, LABEL_SESSION).and_then(|v| v.parse::<SessionId>().ok());
        let row = id.and_then(|id| rows.remove(&id));
        let adopted = match (id, row, running) {
            (Some(id), Some(row), true) => adopt(host, id, &container_id, &container, row).await,
            _ => false,
        };
        if adopted {
            report.adopted += 1;
        } else {
            strays.push((container_id, id));
        }
    }
    // The API listens only after this, so strays go all at once and without a
    // stop grace: nobody is served by them, and one grace each kept a restarted
    // daemon deaf for seconds.
    let reaped = strays.iter().map(|(container_id, id)| async move {
        if let Err(error) = host.docker.stop_and_remove(container_id, 0).await {
            tracing::error!(container = container_id, %error, "reaping a stray session container failed");
        }
        if let Some(id) = id {
            let _ = SessionPaths::new(&host.config, *id).remove();
            if let Err(error) = host.control.ended(*id).await {
                tracing::warn!(session = %id, %error, "removing a reaped session's row failed; the next snapshot ends it");
            }
        }
    });
    futures_util::future::join_all(reaped).await;
    report.reaped_containers = strays.len();
    // Rows whose container is gone: the session cannot be served any more.
    for id in rows.keys() {
        if let Err(error) = host.control.ended(*id).await {
            tracing::warn!(session = %id, %error, "removing the row of a session without a container failed; the next snapshot ends it");
        }
        report.deleted_rows += 1;
    }
    report.removed_dirs = remove_stray_dirs(host);
    tracing::info!(?report, "reconciled with Docker and the control plane");
    Ok(report)
}

async fn adopt(
    host: &Arc<Host>,
    id: SessionId,
    container_id: &str,
    container: &bollard::models::ContainerSummary,
    row: Row,
) -> bool {
    // A container of another runtime (the host's setting changed) is not ours to keep warm.
    let runtime = host.runtime();
    if label(container, LABEL_RUNTIME) != Some(runtime.name.as_str()) {
        return false;
    }
    let tty = label(container, LABEL_TTY).and_then(|t| t.parse::<u8>().ok());
    let ports: Vec<PortMapping> = label(container, LABEL_PORTS)
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let gpus: Vec<String> = label(container, LABEL_GPUS)
        .and_then(|g| serde_json::from_str(g).ok())
        .unwrap_or_default();
    let owner = row
        .user_id
        .zip(row.token_sha256)
        .map(|(user_id, token_sha256)| Owner {
            user_id,
            token_sha256,
        });
    let phase = match (row.status, owner) {
        (SessionStatus::Waiting | SessionStatus::Allocated, _) => Phase::Waiting,
        (SessionStatus::Running, Some(owner)) => Phase::Running(owner),
        // Claimed, and maybe configured, but not running: the client's request
        // died with the old daemon and its retry (same token) finishes it. A
        // retried config.json replaces the first one atomically.
        (SessionStatus::Connecting, Some(owner)) => Phase::Connecting(owner),
        _ => return false,
    };
    let connecting = matches!(phase, Phase::Connecting(_));
    {
        let mut resources = host.resources();
        let tty_ok = tty.is_none_or(|t| resources.ttys.reserve(t));
        let ports_ok = tty_ok && resources.ports.reserve(&ports);
        if !ports_ok || !resources.gpus.reserve(&gpus) {
            if let Some(t) = tty.filter(|_| tty_ok) {
                resources.ttys.release(t);
            }
            if ports_ok {
                resources.ports.release(&ports);
            }
            return false;
        }
    }
    let container_ip = host.docker.container_ip(container_id).await.ok().flatten();
    let paths = SessionPaths::new(&host.config, id);
    // Input devices died with the old daemon's fds unless the app holds them;
    // an adopted session keeps whatever it has.
    let session = Session::new(
        id,
        runtime,
        paths,
        tty,
        ports,
        container_id.to_owned(),
        container_ip,
        None,
        phase,
    )
    .with_gpus(gpus);
    // The lifetime it was given when it was finished, kept by this daemon.
    let facts_dir = session.paths.facts.clone();
    let facts =
        tokio::task::spawn_blocking(move || crate::session::facts::read_session(&facts_dir))
            .await
            .ok()
            .flatten();
    if let Some(facts) = facts {
        session.set_lifetime_ends_at(facts.deadlines.lifetime_ends_at);
    }
    let session = Arc::new(session);
    host.insert_session(session.clone());
    if connecting {
        tracing::info!(session = %id, "adopted a claimed session; waiting for the client's json_transport again");
        crate::session::finish::arm_client_timeout(host, session);
    }
    true
}

/// Removes session/socket/log directories and volume mount points that
/// belong to no adopted session. Only names that parse as session ids are
/// touched, and mount points are only unmounted and removed when empty.
fn remove_stray_dirs(host: &Host) -> usize {
    let mut removed = 0;
    let volumes = host.config.volumes_dir();
    for root in [
        host.config.sessions_dir(),
        host.config.sockets_dir(),
        host.config.logs_dir(),
        volumes.clone(),
    ] {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<SessionId>().ok())
            else {
                continue;
            };
            if host.session(id).is_some() {
                continue;
            }
            let path = root.join(id.to_string());
            let gone = if root == volumes {
                crate::resources::volumes::remove_mount_point(&path).is_ok()
            } else {
                crate::session::dir::remove_capped_dir(&path).is_ok()
            };
            removed += usize::from(gone);
        }
    }
    removed
}
