//! Who this host is (IMDSv2 or local flags) and its registration with the
//! control plane.

use std::net::IpAddr;

use berth_common::grant::GrantVerifier;
use berth_common::host_api::RegisterRequest;
use berth_common::imds::{ImdsClient, ImdsError};
use berth_common::{HostId, HostStatus};

use crate::config::Config;
use crate::control::{ControlError, ControlPlane};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub host_id: HostId,
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub public_ip: Option<IpAddr>,
    pub private_ip: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading instance metadata: {0}")]
    Metadata(#[from] ImdsError),
    #[error("invalid local host id: {0}")]
    LocalId(#[from] berth_common::ids::InvalidHostId),
    #[error("host {host} has ended and can no longer register: {reason}")]
    Ended { host: HostId, reason: String },
    #[error("registering with the control plane: {0}")]
    Control(#[from] ControlError),
}

/// This host's identity: from IMDSv2, or from the `--local-*` flags.
pub async fn identity(config: &Config) -> Result<Identity, RegistryError> {
    if config.local {
        let ip = config.public_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        return Ok(Identity {
            host_id: HostId::parse(config.local_host_id.clone())?,
            region: config.local_region.clone(),
            image_id: config.local_image_id.clone(),
            instance_type: config.local_instance_type.clone(),
            public_ip: Some(ip),
            private_ip: Some(ip),
        });
    }
    let imds = ImdsClient::new(&config.imds_endpoint)?;
    let id = imds.identity().await?;
    Ok(Identity {
        host_id: id.instance_id,
        region: id.region,
        image_id: id.ami_id,
        instance_type: id.instance_type,
        public_ip: config.public_ip.or(id.public_ipv4).or(id.local_ipv4),
        private_ip: id.local_ipv4,
    })
}

/// What registration found.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Sessions this host runs at once.
    pub capacity: i32,
    /// The host was already told to drain: drain at once and exit.
    pub draining: bool,
    /// Checks the browser gateway's access grants (`None`: a control plane
    /// without a gateway key; grants are then refused).
    pub grants: Option<GrantVerifier>,
}

/// The API endpoint and certificate this host publishes.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    pub api_port: u16,
    pub cert_sha256: &'a str,
    pub version: &'a str,
    /// The GPU device ids sessions can be given.
    pub gpus: &'a [String],
}

/// Registers with the control plane (see [`ControlPlane::register`]).
pub async fn register(
    control: &ControlPlane,
    me: &Identity,
    endpoint: &Endpoint<'_>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Registration, RegistryError> {
    let request = RegisterRequest {
        host_id: me.host_id.clone(),
        region: me.region.clone(),
        image_id: me.image_id.clone(),
        instance_type: me.instance_type.clone(),
        public_ip: me.public_ip,
        private_ip: me.private_ip,
        api_port: endpoint.api_port,
        cert_sha256: endpoint.cert_sha256.to_owned(),
        version: endpoint.version.to_owned(),
        // Made and kept by the client just before it registers.
        credential_sha256: None,
        gpus: endpoint.gpus.to_vec(),
    };
    let answer = control
        .register(&request, stop)
        .await
        .map_err(|error| match error {
            ControlError::Refused { status: 410, .. } => RegistryError::Ended {
                host: me.host_id.clone(),
                reason: error.to_string(),
            },
            error => RegistryError::Control(error),
        })?;
    let grants = answer.grant_key.as_deref().and_then(|key| {
        GrantVerifier::from_public_key(key)
            .inspect_err(|error| {
                tracing::warn!(%error, "the control plane's grant key is unusable; the browser gateway cannot reach this host's sessions")
            })
            .ok()
    });
    Ok(Registration {
        capacity: answer.capacity,
        draining: answer.status == HostStatus::Draining,
        grants,
    })
}

/// The 1-minute load average, for heartbeats.
pub fn load_average() -> Option<f32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
