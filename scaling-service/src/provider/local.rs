//! The `local` provider: "instances" are real host-service processes on this
//! machine, so the whole system runs end to end on one box. Each gets its own
//! identity from a loopback IMDSv2 server (it boots exactly like an EC2 host:
//! it waits for the scaler's row, then registers), its own state directory, API
//! port, host-port range and TTY range. Terminating stops the process (SIGTERM,
//! then SIGKILL) and removes its containers and state — what EC2 termination
//! does to a machine. Records on disk let `describe` survive a scaler restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_common::imds::server::{instance_values, ImdsServer};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    tags, CloudInstance, InstanceState, LaunchRequest, LaunchedInstance, Provider, ProviderError,
};

/// Local hosts fit in these: 9 hosts × 6 TTYs in 10..=63, 500 ports each.
const MAX_LOCAL_HOSTS: usize = 9;
const TTYS_PER_HOST: usize = 6;
const PORTS_PER_HOST: u16 = 500;
const PORT_BASE: u16 = 20_000;
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    pid: u32,
    slot: usize,
    region: String,
    instance_type: String,
    launch_id: Option<Uuid>,
    environment: String,
    terminated: bool,
}

#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub environment: String,
    pub runtime: String,
    pub heartbeat_secs: u64,
    pub log_filter: String,
}

impl LocalSettings {
    /// The settings the scaler's configuration gives local hosts.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            binary: config.local_host_binary.clone(),
            dir: config.local_dir.clone(),
            environment: config.common.environment.clone(),
            runtime: config.local_runtime.clone(),
            heartbeat_secs: config.heartbeat_secs,
            log_filter: config.common.log_filter.clone(),
        }
    }
}

#[derive(Debug)]
pub struct LocalProvider {
    settings: LocalSettings,
    /// Children of this process (reaped on terminate) and their IMDS servers.
    children: Mutex<HashMap<String, (Child, ImdsServer)>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(format!("{what}: {e}"))
}

impl LocalProvider {
    pub fn new(settings: LocalSettings) -> Result<Self, ProviderError> {
        std::fs::create_dir_all(settings.dir.join(&settings.environment))
            .map_err(|e| unavailable("creating BERTH_LOCAL_DIR", e))?;
        Ok(Self {
            settings,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn records_dir(&self) -> PathBuf {
        self.settings.dir.join(&self.settings.environment)
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.records_dir().join(id)
    }

    fn records(&self) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(self.records_dir()) else {
            return vec![];
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    fn save(&self, record: &Record) -> Result<(), ProviderError> {
        let path = self.records_dir().join(format!("{}.json", record.id));
        let bytes = serde_json::to_vec(record)
            .map_err(|e| unavailable("encoding a local instance record", e))?;
        berth_common::atomic_file::write_atomically(&path, &bytes, 0o644)
            .map_err(|e| unavailable("writing a local instance record", e))
    }

    /// Serves `value` at metadata `path` to the local host `id` (as EC2 would
    /// a spot notice); `None` removes it. False when this process did not
    /// start that host.
    pub fn set_metadata(&self, id: &str, path: &str, value: Option<&str>) -> bool {
        match self.lock().get(id) {
            Some((_, imds)) => {
                imds.set_value(path, value);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Child, ImdsServer)>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the host process of `record` still runs (and is ours: the pid
    /// was not reused by something else).
    fn alive(&self, record: &Record) -> bool {
        if let Some((child, _)) = self.lock().get_mut(&record.id) {
            return matches!(child.try_wait(), Ok(None));
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid)).unwrap_or_default();
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", record.pid)).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        !zombie && String::from_utf8_lossy(&cmdline).contains(&record.id)
    }

    async fn start_one(
        &self,
        request: &LaunchRequest,
        instance_type: &str,
        slot: usize,
    ) -> Result<LaunchedInstance, ProviderError> {
        let id = format!("l-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let dir = self.instance_dir(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| unavailable("creating a local instance directory", e))?;
        let values = instance_values(
            &id,
            instance_type,
            &request.region,
            &request.image_id,
            "127.0.0.1",
        );
        let imds = ImdsServer::start(([127, 0, 0, 1], 0).into(), values)
            .await
            .map_err(|e| unavailable("starting a local IMDS", e))?;
        let api_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| unavailable("finding a free API port", e))?
            .port();
        let low_port = PORT_BASE + slot as u16 * PORTS_PER_HOST;
        let low_tty = 10 + slot * TTYS_PER_HOST;
        let log = std::fs::File::create(dir.join("host-service.log"))
            .map_err(|e| unavailable("creating the host log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| unavailable("creating the host log", e))?;
        let s = &self.settings;
        let mut command = Command::new(&s.binary);
        command
            .args([
                "--control-url",
                &request.control_url,
                "--env",
                &s.environment,
            ])
            .args(["--imds-endpoint", &imds.endpoint()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args([
                "--port-range",
                &format!("{low_port}-{}", low_port + PORTS_PER_HOST - 1),
            ])
            .args([
                "--tty-range",
                &format!("{low_tty}-{}", low_tty + TTYS_PER_HOST - 1),
            ])
            .args(["--publish-ip", "127.0.0.1", "--runtime", &s.runtime])
            .args([
                "--heartbeat-secs",
                &s.heartbeat_secs.to_string(),
                "--stop-grace-secs",
                "2",
            ])
            // Only what the host needs: the scaler's own settings must not leak in.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", &s.log_filter)
            .env("BERTH_HOST_TOKEN", &request.bootstrap_token.0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Its own process group: a Ctrl-C meant for the scaler does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|e| {
            ProviderError::Rejected(format!(
                "starting {} failed: {e}; set BERTH_LOCAL_HOST_BINARY",
                s.binary.display()
            ))
        })?;
        let record = Record {
            id: id.clone(),
            pid: child.id(),
            slot,
            region: request.region.clone(),
            instance_type: instance_type.to_owned(),
            launch_id: request
                .tags
                .iter()
                .find(|(k, _)| k == tags::LAUNCH_ID)
                .and_then(|(_, v)| v.parse().ok()),
            environment: s.environment.clone(),
            terminated: false,
        };
        self.save(&record)?;
        self.lock().insert(id.clone(), (child, imds));
        tracing::info!(
            host = id,
            pid = record.pid,
            api_port,
            slot,
            "started a local host"
        );
        Ok(LaunchedInstance {
            id,
            instance_type: instance_type.to_owned(),
            private_ip: Some("127.0.0.1".into()),
            public_ip: Some("127.0.0.1".into()),
        })
    }

    fn stop_one(&self, record: &mut Record) {
        if self.alive(record) {
            let pid = nix::unistd::Pid::from_raw(record.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while self.alive(record) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.alive(record) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        if let Some((mut child, _imds)) = self.lock().remove(&record.id) {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_containers(&record.id);
        // The host's log stays for whoever looks into what happened; its state
        // (keys, session directories) goes with the machine.
        let state = self.instance_dir(&record.id).join("state");
        berth_common::mounts::unmount_beneath(&state);
        let _ = std::fs::remove_dir_all(state);
        record.terminated = true;
    }
}

/// The machine is gone, so are its containers.
fn remove_containers(host: &str) {
    let listed = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=berth.host={host}")])
        .output();
    let Ok(listed) = listed else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output();
    }
}

fn free_slot(used: &[usize]) -> Option<usize> {
    (0..MAX_LOCAL_HOSTS).find(|s| !used.contains(s))
}

impl Provider for LocalProvider {
    fn launch<'a>(
        &'a self,
        request: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Vec<LaunchedInstance>, ProviderError>> {
        Box::pin(async move {
            let instance_type = request
                .instance_types
                .first()
                .cloned()
                .unwrap_or_else(|| "local".into());
            let mut used: Vec<usize> = self
                .records()
                .iter()
                .filter(|r| !r.terminated)
                .map(|r| r.slot)
                .collect();
            let mut launched = vec![];
            for _ in 0..request.count {
                let slot = free_slot(&used).ok_or_else(|| {
                    ProviderError::Capacity(format!(
                        "this machine runs at most {MAX_LOCAL_HOSTS} local hosts"
                    ))
                })?;
                used.push(slot);
                launched.push(self.start_one(request, &instance_type, slot).await?);
            }
            Ok(launched)
        })
    }

    fn terminate<'a>(
        &'a self,
        _region: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            for mut record in self
                .records()
                .into_iter()
                .filter(|r| ids.contains(&r.id) && !r.terminated)
            {
                tokio::task::block_in_place(|| self.stop_one(&mut record));
                self.save(&record)?;
                tracing::info!(host = record.id, "terminated a local host");
            }
            Ok(())
        })
    }

    fn describe<'a>(
        &'a self,
        region: &'a str,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudInstance>, ProviderError>> {
        Box::pin(async move {
            Ok(self
                .records()
                .into_iter()
                .filter(|r| r.region == region && r.environment == environment)
                .map(|r| CloudInstance {
                    // A crashed host process is a machine whose daemon died:
                    // the instance runs until terminated, as on EC2.
                    state: if r.terminated {
                        InstanceState::Terminated
                    } else {
                        InstanceState::Running
                    },
                    id: r.id,
                    instance_type: r.instance_type,
                    launch_id: r.launch_id,
                })
                .collect())
        })
    }
}

/// Removes every local host of `environment` under `dir` (the demo's clean-up).
pub fn remove_all(dir: &Path, environment: &str) -> usize {
    let provider = LocalProvider {
        settings: LocalSettings {
            binary: PathBuf::new(),
            dir: dir.to_owned(),
            environment: environment.to_owned(),
            runtime: String::new(),
            heartbeat_secs: 30,
            log_filter: String::new(),
        },
        children: Mutex::new(HashMap::new()),
    };
    let mut count = 0;
    for mut record in provider.records() {
        if record.terminated {
            // Terminated before this clean-up (an earlier run): its record and
            // log have served their purpose and would otherwise pile up.
            berth_common::mounts::unmount_beneath(&provider.instance_dir(&record.id));
            let _ = std::fs::remove_dir_all(provider.instance_dir(&record.id));
            let _ =
                std::fs::remove_file(provider.records_dir().join(format!("{}.json", record.id)));
            continue;
        }
        provider.stop_one(&mut record);
        let _ = provider.save(&record);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_give_disjoint_port_and_tty_ranges() {
        assert_eq!(free_slot(&[]), Some(0));
        assert_eq!(free_slot(&[0, 1, 3]), Some(2));
        assert_eq!(free_slot(&(0..MAX_LOCAL_HOSTS).collect::<Vec<_>>()), None);
        let last_tty = 10 + (MAX_LOCAL_HOSTS - 1) * TTYS_PER_HOST + TTYS_PER_HOST - 1;
        assert!(last_tty <= 63, "TTY ranges stay within 10..=63");
        let last_port =
            u32::from(PORT_BASE) + (MAX_LOCAL_HOSTS as u32) * u32::from(PORTS_PER_HOST) - 1;
        assert!(
            last_port < 32_768,
            "ports stay below the kernel's ephemeral range"
        );
    }
}
