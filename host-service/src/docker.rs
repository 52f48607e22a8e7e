//! Session containers through the Docker Engine API (bollard). Names and
//! labels come only from typed ids, never from request input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_common::{HostId, SessionId};
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, DeviceRequest, EventMessage, HostConfig,
    HostConfigLogConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::Stream;

use crate::resources::devices::{device_mappings, InputNode, SessionDevices};
use crate::resources::gpus::GpuDriver;
use crate::resources::PortMapping;
use crate::runtime::RuntimeSpec;

pub const LABEL_SESSION: &str = "berth.session";
pub const LABEL_HOST: &str = "berth.host";
pub const LABEL_TTY: &str = "berth.tty";
pub const LABEL_PORTS: &str = "berth.ports";
pub const LABEL_UINPUT: &str = "berth.uinput";
pub const LABEL_RUNTIME: &str = "berth.runtime";
/// JSON list of the session's GPU device ids (absent without GPUs).
pub const LABEL_GPUS: &str = "berth.gpus";

/// Where the session directory appears inside the container.
pub const SESSION_DIR_IN_CONTAINER: &str = "/berth";
pub const SOCKETS_DIR_IN_CONTAINER: &str = "/tmp/sockets";
pub const LOGS_DIR_IN_CONTAINER: &str = "/var/log/berth";

/// Docker answers slowly when the machine is loaded; a bounded wait for
/// response headers still catches a wedged daemon.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("connecting to the Docker engine: {0}; check dockerd runs and /var/run/docker.sock (or DOCKER_HOST) is reachable")]
    Connect(#[source] BollardError),
    #[error("{doing} container {container}: {source}")]
    Call {
        doing: &'static str,
        container: String,
        #[source]
        source: BollardError,
    },
    #[error("listing Berth's containers: {0}")]
    List(#[source] BollardError),
}

#[derive(Clone, Debug)]
pub struct DockerEngine {
    docker: Docker,
}

/// Everything a session container is made from.
#[derive(Debug)]
pub struct ContainerSpec<'a> {
    pub session: SessionId,
    pub host: &'a HostId,
    pub runtime: &'a RuntimeSpec,
    pub tty: Option<u8>,
    pub ports: &'a [PortMapping],
    pub input_nodes: Vec<InputNode<'a>>,
    pub session_dir: &'a Path,
    pub sockets_dir: &'a Path,
    pub logs_dir: &'a Path,
    /// Host files mounted read-only at container paths (the session's facts).
    pub read_only_files: &'a [(PathBuf, &'static str)],
    /// GPU device ids from the host's ledger, given as the runtime's driver says.
    pub gpus: &'a [String],
    /// The empty mount point the user's data is mounted on once known.
    pub volume_dir: &'a Path,
    pub publish_ip: IpAddr,
    pub cap_add: &'a [String],
    pub security_opts: &'a [String],
}

/// `berth-<uuid>`: only `[A-Za-z0-9_.-]`, because it is built from a UUID.
pub fn container_name(session: SessionId) -> String {
    format!("berth-{session}")
}

pub(crate) fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_not_modified(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

impl DockerEngine {
    /// The engine's API, for the pieces that manage more than containers
    /// (the session networks).
    pub(crate) fn api(&self) -> &Docker {
        &self.docker
    }

    /// Connects to the local engine and agrees on an API version it speaks
    /// (Docker 20.10 only knows 1.41).
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(DockerError::Connect)?
            .with_timeout(DOCKER_TIMEOUT);
        let docker = docker
            .negotiate_version()
            .await
            .map_err(DockerError::Connect)?;
        docker.ping().await.map_err(DockerError::Connect)?;
        Ok(Self { docker })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub async fn ping(&self) -> bool {
        self.docker.ping().await.is_ok()
    }

    /// Creates and starts the container; on a failed start the half-made
    /// container is removed so nothing is left behind.
    pub async fn create_and_start(&self, spec: &ContainerSpec<'_>) -> Result<String, DockerError> {
        let name = container_name(spec.session);
        let body = container_body(spec);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| DockerError::Call {
                doing: "creating",
                container: name.clone(),
                source,
            })?;
        if let Err(source) = self
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = self.remove(&created.id).await;
            return Err(DockerError::Call {
                doing: "starting",
                container: name,
                source,
            });
        }
        Ok(created.id)
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes. Idempotent: a
    /// container that is already stopped or gone is fine.
    pub async fn stop_and_remove(&self, container: &str, grace: u32) -> Result<(), DockerError> {
        let options = StopContainerOptionsBuilder::new().t(grace as i32).build();
        match self.docker.stop_container(container, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) || is_not_modified(&e) => {}
            Err(source) => {
                return Err(DockerError::Call {
                    doing: "stopping",
                    container: container.to_owned(),
                    source,
                })
            }
        }
        self.remove(container).await
    }

    async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 409: removal already in progress — the container is on its way out.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(source) => Err(DockerError::Call {
                doing: "removing",
                container: container.to_owned(),
                source,
            }),
        }
    }

    /// The container's address on its network, which readiness probes use.
    pub async fn container_ip(&self, container: &str) -> Result<Option<IpAddr>, DockerError> {
        let inspected = self
            .docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|source| DockerError::Call {
                doing: "inspecting",
                container: container.to_owned(),
                source,
            })?;
        let settings = inspected.network_settings.unwrap_or_default();
        let from_networks = settings
            .networks
            .unwrap_or_default()
            .into_values()
            .filter_map(|n| n.ip_address)
            .find(|ip| !ip.is_empty());
        let ip = from_networks.or(settings.ip_address.filter(|ip| !ip.is_empty()));
        Ok(ip.and_then(|ip| ip.parse().ok()))
    }

    /// Whether the container exists and runs.
    pub async fn is_running(&self, container: &str) -> Result<bool, DockerError> {
        match self
            .docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(DockerError::Call {
                doing: "inspecting",
                container: container.to_owned(),
                source,
            }),
        }
    }

    /// Every container (running or not) labelled as this host's.
    pub async fn list_host_containers(
        &self,
        host: &HostId,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_HOST}={host}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(DockerError::List)
    }

    /// `die` events of this host's containers.
    pub fn container_deaths(
        &self,
        host: &HostId,
    ) -> impl Stream<Item = Result<EventMessage, BollardError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("event", vec!["die".to_owned()]),
            ("label", vec![format!("{LABEL_HOST}={host}")]),
        ]);
        self.docker
            .events(Some(EventsOptionsBuilder::new().filters(&filters).build()))
    }
}

fn container_body(spec: &ContainerSpec<'_>) -> ContainerCreateBody {
    let rt = spec.runtime;
    let mut labels = HashMap::from([
        (LABEL_SESSION.to_owned(), spec.session.to_string()),
        (LABEL_HOST.to_owned(), spec.host.to_string()),
        (LABEL_RUNTIME.to_owned(), rt.name.clone()),
        (
            LABEL_PORTS.to_owned(),
            serde_json::to_string(spec.ports).unwrap_or_else(|_| "[]".to_owned()),
        ),
    ]);
    if let Some(tty) = spec.tty {
        labels.insert(LABEL_TTY.to_owned(), tty.to_string());
    }
    if !spec.gpus.is_empty() {
        labels.insert(
            LABEL_GPUS.to_owned(),
            serde_json::to_string(spec.gpus).unwrap_or_else(|_| "[]".to_owned()),
        );
    }
    let nodes: Vec<String> = spec
        .input_nodes
        .iter()
        .map(|node| node.path.display().to_string())
        .collect();
    labels.insert(
        LABEL_UINPUT.to_owned(),
        serde_json::to_string(&nodes).unwrap_or_else(|_| "[]".to_owned()),
    );

    let mut env: Vec<String> = rt.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push(format!("BERTH_SESSION_ID={}", spec.session));
    env.push(format!(
        "BERTH_CONFIG={SESSION_DIR_IN_CONTAINER}/config.json"
    ));
    if let Some(tty) = spec.tty {
        env.push(format!("BERTH_TTY={tty}"));
    }

    let exposed = spec
        .ports
        .iter()
        .map(|m| (port_key(m), HashMap::new()))
        .collect();
    // Only public ports are published; proxy-only ones are reached at the
    // container's address by the daemon's proxy.
    let bindings = spec
        .ports
        .iter()
        .filter_map(|m| {
            let binding = PortBinding {
                host_ip: Some(spec.publish_ip.to_string()),
                host_port: Some(m.host_port?.to_string()),
            };
            Some((port_key(m), Some(vec![binding])))
        })
        .collect();
    let (devices, device_cgroup_rules) = device_mappings(&SessionDevices {
        tty: spec.tty,
        input_nodes: spec.input_nodes.clone(),
    });
    let mut binds = vec![
        format!("{}:{SESSION_DIR_IN_CONTAINER}", spec.session_dir.display()),
        format!("{}:{SOCKETS_DIR_IN_CONTAINER}", spec.sockets_dir.display()),
        format!("{}:{LOGS_DIR_IN_CONTAINER}", spec.logs_dir.display()),
    ];
    binds.extend(
        spec.read_only_files
            .iter()
            .map(|(host, container)| format!("{}:{container}:ro", host.display())),
    );
    if let Some(volume) = &rt.user_volume {
        // rslave: the user's directory, mounted on the host when the session
        // is finished for its user, shows up in the running container.
        binds.push(format!(
            "{}:{}:rslave",
            spec.volume_dir.display(),
            volume.path
        ));
    }
    let tmpfs = HashMap::from([
        ("/run".to_owned(), "rw,size=52428800".to_owned()),
        ("/run/lock".to_owned(), "rw,size=52428800".to_owned()),
    ]);
    let mut security_opt = vec!["no-new-privileges".to_owned()];
    security_opt.extend(spec.security_opts.iter().cloned());

    ContainerCreateBody {
        image: Some(rt.image.clone()),
        labels: Some(labels),
        env: Some(env),
        exposed_ports: Some(exposed),
        host_config: Some(HostConfig {
            network_mode: Some(rt.egress.network().name.to_owned()),
            // What the app prints is rotated: at most 3 files of 10 MB.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "10m".to_owned()),
                    ("max-file".to_owned(), "3".to_owned()),
                ])),
            }),
            port_bindings: Some(bindings),
            devices: Some(devices),
            device_cgroup_rules: Some(device_cgroup_rules),
            device_requests: gpu_requests(&rt.gpu_driver, spec.gpus),
            binds: Some(binds),
            tmpfs: Some(tmpfs),
            shm_size: Some(rt.shm_mib * 1024 * 1024),
            memory: Some(rt.memory_mib * 1024 * 1024),
            // Equal to memory: no swap on top, so a runaway session cannot thrash the host.
            memory_swap: Some(rt.memory_mib * 1024 * 1024),
            cpu_shares: Some(rt.cpu_shares),
            pids_limit: Some(4096),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(spec.cap_add.to_vec()),
            security_opt: Some(security_opt),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Docker device request giving a container exactly these GPUs: the
/// NVIDIA runtime's (`nvidia`, device ids, the `gpu` capability) or CDI
/// device names (`<kind>=<id>`).
pub fn gpu_requests(driver: &GpuDriver, gpus: &[String]) -> Option<Vec<DeviceRequest>> {
    if gpus.is_empty() {
        return None;
    }
    Some(vec![match driver {
        GpuDriver::Nvidia => DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(gpus.to_vec()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        },
        GpuDriver::Cdi { kind } => DeviceRequest {
            driver: Some("cdi".to_owned()),
            device_ids: Some(gpus.iter().map(|id| format!("{kind}={id}")).collect()),
            ..Default::default()
        },
    }])
}

fn port_key(m: &PortMapping) -> String {
    format!("{}/{}", m.container_port, m.protocol.as_str())
}

/// Reads a label.
pub fn label<'a>(summary: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    summary.labels.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_requested_exactly_as_their_driver_names_them() {
        let ids = vec!["0".to_owned(), "3".to_owned()];
        let nvidia = gpu_requests(&GpuDriver::Nvidia, &ids).unwrap();
        assert_eq!(
            serde_json::to_value(&nvidia).unwrap(),
            serde_json::json!([{"Driver": "nvidia", "DeviceIDs": ["0", "3"], "Capabilities": [["gpu"]]}])
        );
        let cdi = GpuDriver::Cdi {
            kind: "nvidia.com/gpu".into(),
        };
        assert_eq!(
            serde_json::to_value(gpu_requests(&cdi, &ids).unwrap()).unwrap(),
            serde_json::json!([{"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=0", "nvidia.com/gpu=3"]}])
        );
        assert!(
            gpu_requests(&GpuDriver::Nvidia, &[]).is_none(),
            "no GPUs, no request"
        );
    }

    #[test]
    fn a_gpu_sessions_create_call_names_exactly_its_ledger_ids() {
        let mut row = crate::runtime::tests::row(
            serde_json::json!({"tcp": {"port": 8080}}),
            serde_json::json!({}),
        );
        row.gpus = "2".into();
        let runtime = RuntimeSpec::from_row(row).unwrap();
        let host = HostId::parse("h-1").unwrap();
        let ids = vec!["1".to_owned(), "3".to_owned()];
        let dir = Path::new("/var/lib/berth/x");
        let spec = ContainerSpec {
            session: SessionId::new(),
            host: &host,
            runtime: &runtime,
            tty: None,
            ports: &[],
            input_nodes: vec![],
            session_dir: dir,
            sockets_dir: dir,
            logs_dir: dir,
            read_only_files: &[],
            gpus: &ids,
            volume_dir: dir,
            publish_ip: IpAddr::from([127, 0, 0, 1]),
            cap_add: &[],
            security_opts: &[],
        };
        let body = container_body(&spec);
        assert_eq!(body.labels.as_ref().unwrap()[LABEL_GPUS], r#"["1","3"]"#);
        assert_eq!(
            body.host_config.unwrap().device_requests,
            gpu_requests(&GpuDriver::Nvidia, &ids)
        );
        let none = ContainerSpec { gpus: &[], ..spec };
        let body = container_body(&none);
        assert!(!body.labels.unwrap().contains_key(LABEL_GPUS));
        assert_eq!(body.host_config.unwrap().device_requests, None);
    }
}
