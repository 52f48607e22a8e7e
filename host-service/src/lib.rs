//! Berth's host daemon as a library, so tests drive the real thing in-process.

#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod api;
pub mod config;
pub mod container_events;
pub mod control;
pub mod daemon;
pub mod deadlines;
pub mod docker;
pub mod drain;
pub mod faults;
pub mod heartbeat;
pub mod host;
pub mod isolation;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod reconcile;
pub mod registry;
pub mod resources;
pub mod runtime;
pub mod session;
pub mod spot;
pub mod upstream;
pub mod warm_pool;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_common::config::exit;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    #[error("keeping sessions apart failed, so this host starts none: {0}")]
    Isolation(#[from] isolation::IsolationError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Tls(#[from] berth_common::tls::TlsError),
    #[error(transparent)]
    Input(#[from] resources::uinput::InputError),
    #[error(transparent)]
    UserData(#[from] resources::volumes::VolumeError),
    #[error("runtime {0:?} mounts a user volume, but BERTH_USER_DATA_ROOT is not set; set it to the directory (e.g. an EFS mount) that holds users' data")]
    NoUserDataRoot(String),
    #[error("the proxy cookie key {path}: {source}; BERTH_STATE_DIR must be writable by root")]
    CookieKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this host has not registered yet ({0} holds no host credential), so there is nothing to drain; start the daemon with BERTH_HOST_TOKEN first")]
    NotRegistered(PathBuf),
    #[error("binding the host API on {addr}: {source}; is another host-service running, or is BERTH_API_ADDR wrong?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "preparing the state directory {path}: {source}; BERTH_STATE_DIR must be writable by root"
    )]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Configuration problems exit 78 (EX_CONFIG) so systemd and operators can
    /// tell them from runtime failures (1).
    pub fn exit_code(&self) -> i32 {
        use registry::RegistryError as R;
        match self {
            Error::Control(e) | Error::Registry(R::Control(e)) if e.is_config() => exit::CONFIG,
            Error::Registry(R::LocalId(_))
            | Error::Runtime(
                runtime::RuntimeError::Unknown(_) | runtime::RuntimeError::Invalid { .. },
            )
            | Error::Input(resources::uinput::InputError::Required(_))
            | Error::Bind { .. }
            | Error::NoUserDataRoot(_)
            | Error::NotRegistered(_)
            | Error::UserData(resources::volumes::VolumeError::NotADirectory(_))
            | Error::StateDir { .. }
            | Error::Isolation(
                isolation::IsolationError::Misconfigured { .. }
                | isolation::IsolationError::NoDefaultBridge { .. },
            ) => exit::CONFIG,
            // The host is over: nothing to restart.
            Error::Registry(R::Ended { .. }) => 0,
            _ => exit::RUNTIME,
        }
    }
}
