//! Boot and run: learn who we are, register with the control plane, reconcile, start the
//! tasks, and stop cleanly. Stop (SIGTERM) leaves every session running for
//! the next start to adopt; a finished drain ends the host.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_common::{tls::HostIdentity, HostId, HostStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::ControlPlane;
use crate::docker::DockerEngine;
use crate::host::Host;
use crate::proxy::cookie::CookieSigner;
use crate::registry::{self, Endpoint};
use crate::resources::volumes::UserData;
use crate::runtime::RuntimeSpec;
use crate::{
    api, container_events, deadlines, drain, heartbeat, isolation, reconcile, resources, spot,
    warm_pool, watch, Error,
};

/// Tasks get this long to finish after a stop before the daemon exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A started daemon.
#[derive(Debug)]
pub struct Daemon {
    pub host: Arc<Host>,
    pub api_addr: SocketAddr,
    pub cert_sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped (SIGTERM): sessions keep running.
    Stopped,
    /// Drained: the host is over.
    Drained,
}

pub async fn start(config: Config) -> Result<Daemon, Error> {
    let me = registry::identity(&config).await?;
    prepare_state_dir(&config)?;
    let control = Arc::new(control_plane(&config)?);
    let booted = boot(config, control.clone(), &me).await;
    if let Err(error) = &booted {
        if control.has_credential() {
            control.death_notice(&error.to_string()).await;
        }
    }
    booted
}

fn control_plane(config: &Config) -> Result<ControlPlane, Error> {
    Ok(ControlPlane::new(
        &config.control_url,
        config.control_ca.as_deref(),
        &config.state_dir,
        config.host_token.clone().map(|t| t.0),
    )?)
}

async fn boot(
    config: Config,
    control: Arc<ControlPlane>,
    me: &registry::Identity,
) -> Result<Daemon, Error> {
    let docker = DockerEngine::connect().await?;
    let rules = isolation::install(&docker).await?;
    tracing::info!(
        rules = %rules.join("\n"),
        "sessions are kept from this host, each other and the metadata range by these filter rules"
    );
    let uinput_enabled = resources::uinput::enabled(config.uinput)?;
    let mut names = vec![me.host_id.to_string(), "localhost".to_owned()];
    names.extend(
        me.public_ip
            .iter()
            .chain(&me.private_ip)
            .map(|ip| ip.to_string()),
    );
    let identity = HostIdentity::load_or_generate(&config.tls_dir(), &names)?;
    let tls = Arc::new(identity.server_config()?);
    let listener = TcpListener::bind(config.api_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.api_addr,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.api_addr,
        source,
    })?;
    // Registered and then handed out: read once.
    let gpu_ids = resources::gpus::discover(&config.gpus);
    let endpoint = Endpoint {
        api_port: api_addr.port(),
        cert_sha256: &identity.sha256_hex,
        version: env!("CARGO_PKG_VERSION"),
        gpus: &gpu_ids,
    };
    // Not yet the daemon's own stop: a stop before the host exists ends the wait.
    let registration =
        registry::register(&control, me, &endpoint, &CancellationToken::new()).await?;
    let capacity = registration.capacity;
    if let Some(expected) = config.local_capacity.filter(|c| i32::from(*c) != capacity) {
        tracing::warn!(expected, capacity, "the control plane's row gives this host another capacity than BERTH_LOCAL_CAPACITY; the row's is used");
    }
    let runtime = RuntimeSpec::load(&control, &config.runtime).await?;
    let user_data = match (&config.user_data_root, &runtime.user_volume) {
        (Some(root), _) => Some(UserData::prepare(root, &config.volumes_dir())?),
        (None, Some(_)) => return Err(Error::NoUserDataRoot(runtime.name.clone())),
        (None, None) => None,
    };
    let cookie_key = config.tls_dir().join("proxy-cookie.key");
    let cookies =
        CookieSigner::load_or_generate(&cookie_key).map_err(|source| Error::CookieKey {
            path: cookie_key.clone(),
            source,
        })?;
    tracing::info!(host = %me.host_id, %api_addr, capacity, runtime = runtime.name, uinput = uinput_enabled, "registered");

    let host = Arc::new(Host::new(
        config,
        me.host_id.clone(),
        me.region.clone(),
        control,
        docker,
        runtime,
        uinput_enabled,
        capacity,
        user_data,
        cookies,
        registration.grants.clone(),
        gpu_ids,
    ));
    reconcile::reconcile(&host).await?;
    host.tasks.spawn(api::serve(host.clone(), listener, tls));
    host.tasks.spawn(watch::run(host.clone()));
    host.tasks.spawn(container_events::run(host.clone()));
    host.tasks.spawn(heartbeat::run(host.clone()));
    host.tasks.spawn(heartbeat::watchdog(host.clone()));
    host.tasks.spawn(deadlines::run(host.clone()));
    // Instance metadata answers only on EC2 (or the local provider's own).
    if !host.config.local && host.config.spot_poll_secs > 0 {
        match berth_common::imds::ImdsClient::new(&host.config.imds_endpoint) {
            Ok(imds) => {
                let every = std::time::Duration::from_secs(host.config.spot_poll_secs);
                host.tasks.spawn(spot::run(host.clone(), imds, every));
            }
            Err(error) => tracing::warn!(%error, "spot notices cannot be watched"),
        }
    }
    if registration.draining {
        drain::start(&host);
    } else {
        host.tasks.spawn(warm_pool::run(host.clone()));
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    Ok(Daemon {
        host,
        api_addr,
        cert_sha256: identity.sha256_hex,
    })
}

impl Daemon {
    /// Runs until `shutdown` resolves (stop) or a drain finishes.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) -> Exit {
        tokio::select! {
            _ = shutdown => tracing::info!("stopping; sessions keep running for the next start to adopt"),
            _ = self.host.stop.cancelled() => {}
        }
        self.stop().await
    }

    /// Stops every task of the daemon; containers are left alone.
    pub async fn stop(self) -> Exit {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.host.stop.cancel();
        self.host.tasks.close();
        if tokio::time::timeout(STOP_GRACE, self.host.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within the stop grace");
        }
        if self.host.drained.is_cancelled() {
            Exit::Drained
        } else {
            Exit::Stopped
        }
    }
}

/// The state root is 0700: it holds the TLS key and every session's config.
fn prepare_state_dir(config: &Config) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::StateDir { path, source }
    };
    let root = &config.state_dir;
    fs::create_dir_all(root).map_err(io(root))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io(root))?;
    for dir in [
        config.sessions_dir(),
        config.sockets_dir(),
        config.logs_dir(),
    ] {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    Ok(())
}

/// What `host-service drain` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainRequest {
    /// The host is now DRAINING; its running daemon drains and exits.
    Marked(HostId),
    /// The host was already past ACTIVE (DRAINING, TERMINATING, …): nothing to do.
    Already(HostId, HostStatus),
}

/// `host-service drain`: asks the control plane to mark this host DRAINING,
/// with the credential this host registered with; the running daemon does
/// the rest.
pub async fn request_drain(config: &Config) -> Result<DrainRequest, Error> {
    let me = registry::identity(config).await?;
    let control = control_plane(config)?;
    if !control.has_credential() {
        return Err(Error::NotRegistered(config.state_dir.clone()));
    }
    if control.drain("host-service drain").await? {
        return Ok(DrainRequest::Marked(me.host_id));
    }
    let state = control.status().await?;
    Ok(DrainRequest::Already(me.host_id, state.status))
}
