//! Making a warm session: resources, directories, devices, a started
//! container, then its report to the control plane (a WAITING row) — so the scaler only ever hands out
//! sessions whose container already runs. Any failure undoes what was done.

use std::net::IpAddr;
use std::sync::Arc;

use berth_common::host_api::WarmSession;
use berth_common::SessionId;

use super::dir::SessionPaths;
use super::facts;
use super::{Phase, Session};
use crate::control::ControlError;
use crate::docker::{ContainerSpec, DockerError};
use crate::host::Host;
use crate::resources::uinput::{InputError, SessionInput};
use crate::resources::PortMapping;
use crate::runtime::RuntimeSpec;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no free TTY in BERTH_TTY_RANGE; widen the range or lower the host's capacity")]
    NoTty,
    #[error("no free host ports in BERTH_PORT_RANGE for {0} container ports; widen the range")]
    NoPorts(usize),
    #[error("runtime {runtime} needs {need:?} GPUs per session and this host has {free} free of {total} (BERTH_GPUS); run it on a GPU instance type")]
    NoGpus {
        runtime: String,
        need: crate::resources::gpus::GpuNeed,
        free: usize,
        total: usize,
    },
    #[error("creating session directories under {dir}: {source}")]
    Dirs {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("reporting the warm session: {0}")]
    Report(#[from] ControlError),
}

/// What has been reserved so far, undone on failure.
struct Partial<'a> {
    host: &'a Host,
    /// The runtime as it was when this session started being made.
    runtime: Arc<RuntimeSpec>,
    tty: Option<u8>,
    ports: Vec<PortMapping>,
    gpus: Vec<String>,
    paths: Option<SessionPaths>,
    input: Option<SessionInput>,
    container: Option<String>,
}

impl Partial<'_> {
    async fn undo(mut self) {
        if let Some(container) = self.container.take() {
            if let Err(error) = self.host.docker.stop_and_remove(&container, 1).await {
                tracing::error!(%error, "removing a half-made session container failed");
            }
        }
        if let Some(input) = self.input.take() {
            let _ = input.destroy();
        }
        if let Some(paths) = self.paths.take() {
            let _ = paths.remove();
        }
        let mut resources = self.host.resources();
        if let Some(tty) = self.tty {
            resources.ttys.release(tty);
        }
        resources.ports.release(&self.ports);
        resources.gpus.release(&self.gpus);
    }
}

impl Partial<'_> {
    fn into_session(self, id: SessionId, container_ip: Option<IpAddr>) -> Session {
        let paths = self
            .paths
            .unwrap_or_else(|| SessionPaths::new(&self.host.config, id));
        let container_id = self.container.unwrap_or_default();
        Session::new(
            id,
            self.runtime,
            paths,
            self.tty,
            self.ports,
            container_id,
            container_ip,
            self.input,
            Phase::Waiting,
        )
        .with_gpus(self.gpus)
    }
}

pub async fn spawn_warm(host: &Arc<Host>) -> Result<Arc<Session>, SpawnError> {
    let id = SessionId::new();
    let mut partial = Partial {
        host,
        runtime: host.runtime(),
        tty: None,
        ports: vec![],
        gpus: vec![],
        paths: None,
        input: None,
        container: None,
    };
    let container_ip = match build(host, id, &mut partial).await {
        Ok(ip) => ip,
        Err(e) => {
            partial.undo().await;
            return Err(e);
        }
    };
    let session = Arc::new(partial.into_session(id, container_ip));
    // In the table before the row exists: an allocation hint can then never
    // name a session this daemon does not know.
    host.insert_session(session.clone());
    if let Err(e) = report_warm(host, &session).await {
        host.remove_session(id);
        super::teardown::release(host, &session).await;
        // The report may have landed with only its answer lost: a row
        // without a container must not be handed to a user.
        if let Err(error) = host.control.ended(id).await {
            tracing::warn!(session = %id, %error, "could not withdraw a warm session's report; the next snapshot ends its row");
        }
        return Err(e.into());
    }
    crate::faults::point("spawn.after_row");
    Ok(session)
}

async fn build(
    host: &Arc<Host>,
    id: SessionId,
    partial: &mut Partial<'_>,
) -> Result<Option<IpAddr>, SpawnError> {
    let rt = partial.runtime.clone();
    {
        let mut resources = host.resources();
        if rt.needs_tty {
            partial.tty = Some(resources.ttys.allocate().ok_or(SpawnError::NoTty)?);
        }
        partial.ports = resources
            .ports
            .allocate(&rt.ports)
            .ok_or(SpawnError::NoPorts(rt.ports.len()))?;
        let (total, free) = (resources.gpus.count(), resources.gpus.free());
        partial.gpus = resources
            .gpus
            .allocate(rt.gpus)
            .ok_or_else(|| SpawnError::NoGpus {
                runtime: rt.name.clone(),
                need: rt.gpus,
                free,
                total,
            })?;
    }
    let paths = SessionPaths::new(&host.config, id);
    paths.create().map_err(|source| SpawnError::Dirs {
        dir: paths.session.display().to_string(),
        source,
    })?;
    partial.paths = Some(paths.clone());
    crate::faults::point("spawn.after_resources");
    if host.uinput_enabled && rt.needs_uinput {
        partial.input = Some(SessionInput::create(id, &paths.sockets)?);
    }
    let input_nodes = partial
        .input
        .as_ref()
        .map(|i| i.input_nodes())
        .unwrap_or_default();
    let spec = ContainerSpec {
        session: id,
        host: &host.id,
        runtime: &rt,
        tty: partial.tty,
        ports: &partial.ports,
        input_nodes,
        session_dir: &paths.session,
        sockets_dir: &paths.sockets,
        logs_dir: &paths.logs,
        read_only_files: &facts::mounts(&paths.facts),
        gpus: &partial.gpus,
        volume_dir: &paths.volume,
        publish_ip: host.config.publish_ip,
        cap_add: &host.config.cap_add,
        security_opts: &host.config.security_opts,
    };
    let container_id = host.docker.create_and_start(&spec).await?;
    partial.container = Some(container_id.clone());
    crate::faults::point("spawn.after_container");
    Ok(host.docker.container_ip(&container_id).await?)
}

async fn report_warm(host: &Host, session: &Session) -> Result<(), ControlError> {
    let warm = WarmSession {
        id: session.id,
        runtime: session.runtime.name.clone(),
        container_id: session.container_id.clone(),
        tty: session.tty.map(i32::from),
        ports: serde_json::to_value(&session.ports).unwrap_or_default(),
    };
    host.control.warm_created(&warm).await
}
