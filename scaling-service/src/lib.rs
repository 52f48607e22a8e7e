//! Berth's scheduler as a library, so tests drive the real thing in-process.

#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod api;
pub mod assign;
pub mod audit;
pub mod auth;
pub(crate) mod batching;
pub mod config;
pub mod controller;
pub mod demand;
pub mod deploy;
pub mod evidence;
pub mod faults;
pub mod forecast;
pub mod gateway;
pub(crate) mod hints;
pub mod host_api;
pub mod keys;
pub mod launch;
pub mod metrics;
pub(crate) mod operator;
pub mod policy;
pub mod provider;
pub mod scaler;
pub mod service;
pub mod simulator;
pub mod state;
pub mod sweeps;
pub mod trace;

use berth_common::config::exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] berth_common::db::DbError),
    #[error(transparent)]
    AuthConfig(#[from] auth::AuthConfigError),
    #[error(transparent)]
    Deploy(#[from] deploy::DeployError),
    #[error("invalid host id: {0}")]
    HostId(#[source] berth_common::ids::InvalidHostId),
    #[error(transparent)]
    HostToken(#[from] host_api::identity::IssueError),
    #[error("the local provider cannot start: {0}")]
    LocalProvider(#[from] provider::ProviderError),
    #[error("reading BERTH_USER_DATA_FILE {path}: {source}; new hosts could not boot without it")]
    UserData {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BERTH_CONTROL_URL is not set: hosts launched on EC2 must be told where the control plane's host API is (e.g. https://berth-control.example.com); only development environments (BERTH_ENV dev or dev-*) default to this listener's loopback address")]
    NoControlUrl,
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("the gateway certificate: {0}; give BERTH_GATEWAY_TLS_CERT and BERTH_GATEWAY_TLS_KEY as readable PEM files")]
    GatewayCert(#[from] gateway::tls::CertError),
    #[error("the gateway's TLS settings: {0}")]
    GatewayTls(#[from] rustls::Error),
    #[error("BERTH_GATEWAY_TLS_CERT is set but BERTH_GATEWAY_DOMAIN is not: say which domain the gateway serves sessions under")]
    GatewayWithoutDomain,
    #[error("binding the gateway on {addr}: {source}; is BERTH_GATEWAY_ADDR in use?")]
    GatewayBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the trace to {path}: {source}")]
    TraceWrite {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the API on {addr}: {source}; is PORT in use?")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Db(e) if e.is_config() => exit::CONFIG,
            Error::AuthConfig(_)
            | Error::Bind { .. }
            | Error::LocalProvider(_)
            | Error::UserData { .. }
            | Error::NoControlUrl
            | Error::HostId(_)
            | Error::GatewayCert(_)
            | Error::GatewayTls(_)
            | Error::GatewayWithoutDomain
            | Error::GatewayBind { .. }
            | Error::HostToken(host_api::identity::IssueError::Conflict(_)) => exit::CONFIG,
            _ => exit::RUNTIME,
        }
    }
}
