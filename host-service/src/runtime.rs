//! A runtime's container settings: its row in the `runtimes` table, read
//! through the control plane and checked here.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::time::Duration;

use berth_common::host_api::RuntimeRow;
use serde::Deserialize;

use crate::control::{ControlError, ControlPlane};
use crate::resources::gpus::{GpuDriver, GpuNeed};
use crate::resources::ports::ContainerPort;

/// How the host knows a session's app is ready to serve.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// `GET http://<container>:port/path` answers 2xx.
    Http { port: u16, path: String },
    /// Something accepts TCP connections on the port.
    Tcp { port: u16 },
    /// The app created this file in its session directory (`/berth/<path>`).
    File { path: String },
}

/// An HTTP POST into the container once the app is ready; its JSON answer
/// (e.g. generated credentials) is sealed and returned to the owner only.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitCall {
    pub port: u16,
    pub path: String,
}

/// The user's persistent directory, mounted at `path` in each of their sessions
/// and owned by `uid:gid` (the app's user) when created.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserVolume {
    pub path: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// Where a session's traffic may go besides its own container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// The internet (and whatever the host's routes reach), never the host
    /// itself, another session or the metadata range.
    #[default]
    Open,
    /// Nothing: the sealed bridge has no route out.
    None,
}

/// A relative path that stays inside its directory: no `..`, no root, no
/// empty or odd components. For paths that come from configuration rows.
pub(crate) fn check_relative_name(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && path.len() <= 255
        && !path.contains('\0')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("{path:?} must be a relative path inside the session directory (no '..', no leading '/')"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeSpec {
    pub name: String,
    pub image: String,
    pub ports: Vec<ContainerPort>,
    pub env: BTreeMap<String, String>,
    pub memory_mib: i64,
    pub cpu_shares: i64,
    pub shm_mib: i64,
    pub needs_tty: bool,
    pub needs_uinput: bool,
    pub readiness: Readiness,
    pub ready_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// A session ends this long after it started RUNNING.
    pub max_lifetime: Option<Duration>,
    /// How long before an idle or lifetime end the session is warned.
    pub end_warning: Option<Duration>,
    /// GPUs each session gets, and how they are handed to the container.
    pub gpus: GpuNeed,
    pub gpu_driver: GpuDriver,
    pub init: Option<InitCall>,
    pub user_volume: Option<UserVolume>,
    pub egress: Egress,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime {0:?} is not in the runtimes table; add it (INSERT INTO runtimes …) or set BERTH_RUNTIME to one that is")]
    Unknown(String),
    #[error("runtime {name:?} has an invalid {field}: {why}; fix its row in the runtimes table")]
    Invalid {
        name: String,
        field: &'static str,
        why: String,
    },
    #[error("reading runtime {name:?}: {source}")]
    Unreadable {
        name: String,
        #[source]
        source: ControlError,
    },
}

type Row = RuntimeRow;

impl RuntimeSpec {
    /// The runtime's row, as the control plane has it.
    pub async fn load(control: &ControlPlane, name: &str) -> Result<Self, RuntimeError> {
        let row = control
            .runtime(name)
            .await
            .map_err(|source| RuntimeError::Unreadable {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| RuntimeError::Unknown(name.to_owned()))?;
        Self::from_row(row)
    }

    pub(crate) fn from_row(row: Row) -> Result<Self, RuntimeError> {
        let invalid = |field, why: String| RuntimeError::Invalid {
            name: row.name.clone(),
            field,
            why,
        };
        let ports: Vec<ContainerPort> = serde_json::from_value(row.ports.clone())
            .map_err(|e| invalid("ports", e.to_string()))?;
        let env: BTreeMap<String, String> =
            serde_json::from_value(row.env.clone()).map_err(|e| invalid("env", e.to_string()))?;
        if let Some(key) = env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.starts_with("BERTH_"))
        {
            return Err(invalid(
                "env",
                format!(
                    "variable name {key:?} is empty, has '=' or uses the reserved BERTH_ prefix"
                ),
            ));
        }
        let readiness: Readiness = serde_json::from_value(row.readiness.clone())
            .map_err(|e| invalid("readiness", e.to_string()))?;
        if let Readiness::File { path } = &readiness {
            check_relative_name(path).map_err(|why| invalid("readiness", why))?;
        }
        let init: Option<InitCall> = row
            .init
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| invalid("init", e.to_string()))?;
        if let Some(init) = &init {
            check_url_path(&init.path).map_err(|why| invalid("init", why))?;
            if !ports.iter().any(|p| p.container_port == init.port) {
                return Err(invalid(
                    "init",
                    format!("port {} is not one of the runtime's ports", init.port),
                ));
            }
        }
        if let Readiness::Http { path, .. } = &readiness {
            check_url_path(path).map_err(|why| invalid("readiness", why))?;
        }
        let user_volume: Option<UserVolume> = row
            .user_volume
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| invalid("user_volume", e.to_string()))?;
        if let Some(volume) = &user_volume {
            check_container_path(&volume.path).map_err(|why| invalid("user_volume", why))?;
        }
        let egress: Egress = serde_json::from_value(serde_json::Value::String(row.egress.clone()))
            .map_err(|_| {
                invalid(
                    "egress",
                    format!("{:?} is neither open nor none", row.egress),
                )
            })?;
        let gpus = GpuNeed::parse(&row.gpus).map_err(|why| RuntimeError::Invalid {
            name: row.name.clone(),
            field: "gpus",
            why,
        })?;
        let gpu_driver =
            GpuDriver::parse(&row.gpu_driver).map_err(|why| RuntimeError::Invalid {
                name: row.name.clone(),
                field: "gpu_driver",
                why,
            })?;
        Ok(Self {
            name: row.name,
            image: row.image,
            ports,
            env,
            memory_mib: row.memory_mib.into(),
            cpu_shares: row.cpu_shares.into(),
            shm_mib: row.shm_mib.into(),
            needs_tty: row.needs_tty,
            needs_uinput: row.needs_uinput,
            readiness,
            ready_timeout: Duration::from_secs(row.ready_timeout_s.max(1) as u64),
            idle_timeout: row
                .idle_timeout_s
                .map(|s| Duration::from_secs(s.max(1) as u64)),
            max_lifetime: row
                .max_lifetime_s
                .map(|s| Duration::from_secs(s.max(1) as u64)),
            end_warning: row
                .idle_warning_s
                .map(|s| Duration::from_secs(s.max(1) as u64)),
            gpus,
            gpu_driver,
            init,
            user_volume,
            egress,
        })
    }
}

/// An absolute HTTP path with nothing that could change the request's target.
fn check_url_path(path: &str) -> Result<(), String> {
    let plain = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'\\'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{path:?} must be an absolute URL path of visible ASCII"
        ))
    }
}

/// An absolute container path outside the ones Berth mounts itself.
fn check_container_path(path: &str) -> Result<(), String> {
    let p = std::path::Path::new(path);
    let plain = p.is_absolute()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
        && p.components().count() > 1;
    let reserved = [
        "/berth",
        "/tmp/sockets",
        "/var/log/berth",
        "/run",
        "/proc",
        "/sys",
        "/dev",
    ]
    .iter()
    .any(|r| p.starts_with(r));
    if plain && !reserved {
        Ok(())
    } else {
        Err(format!("{path:?} must be an absolute container path without '..' outside /berth, /run, /proc, /sys and /dev"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn only_plain_relative_paths_are_accepted() {
        assert!(check_relative_name("ready").is_ok());
        assert!(check_relative_name("state/ready").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x", "a\0b"] {
            assert!(check_relative_name(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;
    use serde_json::json;

    /// A runtime row to vary in tests.
    pub(crate) fn row(readiness: serde_json::Value, env: serde_json::Value) -> Row {
        Row {
            name: "t".into(),
            image: "berth-test-app:1".into(),
            ports: json!([{"container_port": 8080, "protocol": "tcp"}, {"container_port": 9000, "protocol": "udp"}]),
            env,
            memory_mib: 256,
            cpu_shares: 512,
            shm_mib: 64,
            needs_tty: true,
            needs_uinput: false,
            readiness,
            ready_timeout_s: 20,
            idle_timeout_s: None,
            max_lifetime_s: None,
            idle_warning_s: None,
            gpus: "0".into(),
            gpu_driver: "nvidia".into(),
            init: None,
            user_volume: None,
            egress: "open".into(),
        }
    }

    #[test]
    fn egress_is_open_or_none() {
        let mut sealed = row(json!({"tcp": {"port": 8080}}), json!({}));
        sealed.egress = "none".into();
        assert_eq!(RuntimeSpec::from_row(sealed).unwrap().egress, Egress::None);
        let mut odd = row(json!({"tcp": {"port": 8080}}), json!({}));
        odd.egress = "lan".into();
        let error = RuntimeSpec::from_row(odd).unwrap_err().to_string();
        assert!(error.contains("egress") && error.contains("lan"), "{error}");
    }

    #[test]
    fn parses_each_readiness_kind() {
        let http = RuntimeSpec::from_row(row(
            json!({"http": {"port": 8080, "path": "/ready"}}),
            json!({}),
        ))
        .unwrap();
        assert_eq!(
            http.readiness,
            Readiness::Http {
                port: 8080,
                path: "/ready".into()
            }
        );
        assert_eq!(http.ports.len(), 2);
        let tcp = RuntimeSpec::from_row(row(json!({"tcp": {"port": 22}}), json!({}))).unwrap();
        assert_eq!(tcp.readiness, Readiness::Tcp { port: 22 });
        let file =
            RuntimeSpec::from_row(row(json!({"file": {"path": "ready"}}), json!({"A": "1"})))
                .unwrap();
        assert_eq!(
            file.readiness,
            Readiness::File {
                path: "ready".into()
            }
        );
    }

    #[test]
    fn refuses_escaping_paths_and_reserved_env() {
        assert!(RuntimeSpec::from_row(row(
            json!({"file": {"path": "../../etc/passwd"}}),
            json!({})
        ))
        .is_err());
        assert!(RuntimeSpec::from_row(row(
            json!({"tcp": {"port": 1}}),
            json!({"BERTH_SESSION_ID": "x"})
        ))
        .is_err());
        assert!(RuntimeSpec::from_row(row(json!({"smoke": {}}), json!({}))).is_err());
    }

    #[test]
    fn init_and_user_volume_are_checked() {
        let mut ok = row(json!({"tcp": {"port": 8080}}), json!({}));
        ok.init = Some(json!({"port": 8080, "path": "/init"}));
        ok.user_volume = Some(json!({"path": "/home/app/data", "uid": 1000, "gid": 1000}));
        let spec = RuntimeSpec::from_row(ok).unwrap();
        assert_eq!(spec.init.unwrap().path, "/init");
        assert_eq!(spec.user_volume.unwrap().uid, 1000);
        for (init, volume) in [
            (json!({"port": 7, "path": "/init"}), json!(null)),
            (json!({"port": 8080, "path": "http://evil/"}), json!(null)),
            (
                json!({"port": 8080, "path": "/x", "host": "evil"}),
                json!(null),
            ),
            (json!(null), json!({"path": "data"})),
            (json!(null), json!({"path": "/data/../etc"})),
            (json!(null), json!({"path": "/berth/data"})),
            (json!(null), json!({"path": "/"})),
        ] {
            let mut bad = row(json!({"tcp": {"port": 8080}}), json!({}));
            bad.init = (!init.is_null()).then_some(init.clone());
            bad.user_volume = (!volume.is_null()).then_some(volume.clone());
            assert!(RuntimeSpec::from_row(bad).is_err(), "{init} {volume}");
        }
    }
}
