//! The whole system on one machine for end-to-end tests: the scaling service
//! (in this process) with the local provider, real host-service processes,
//! real Docker and PostgreSQL.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_testing::TestDb;
use berth_tests::client::{dev_user_token, Assigned, HostClient, ScalerClient};
use clap::Parser;
use scaling_service::config::Cli;
use scaling_service::provider::local::{LocalProvider, LocalSettings};
use scaling_service::scaler::Scaler;
use scaling_service::service::{self, Service};
use serde_json::json;

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-012345";
pub const REGION: &str = "local";

/// Local hosts of concurrently running tests would share slots (port and TTY
/// ranges); one system at a time.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn host_binary() -> PathBuf {
    berth_testing::workspace_binary("host-service")
}

pub struct System {
    pub db: TestDb,
    pub service: Option<Service>,
    /// The local provider the scaler launches hosts with.
    pub local: Arc<LocalProvider>,
    pub url: String,
    pub env: String,
    pub local_dir: PathBuf,
    /// The scaling service's arguments, to start it again.
    pub argv: Vec<String>,
    _hosts: LocalHosts,
}

impl System {
    pub async fn start(target_free_slots: i32, max_hosts: i32) -> Self {
        Self::start_with_idle_timeout(target_free_slots, max_hosts, None).await
    }

    pub async fn start_with_idle_timeout(
        target_free_slots: i32,
        max_hosts: i32,
        idle_timeout_s: Option<i32>,
    ) -> Self {
        Self::start_with(target_free_slots, max_hosts, idle_timeout_s, &[]).await
    }

    /// `extra` scaling-service flags come last, so they win.
    pub async fn start_with(
        target_free_slots: i32,
        max_hosts: i32,
        idle_timeout_s: Option<i32>,
        extra: &[&str],
    ) -> Self {
        let ports = json!([{"container_port": 8080, "protocol": "tcp"}]);
        Self::start_with_ports(target_free_slots, max_hosts, idle_timeout_s, &ports, extra).await
    }

    /// With the `desktop` runtime declaring `ports` (its runtime row's JSON).
    pub async fn start_with_ports(
        target_free_slots: i32,
        max_hosts: i32,
        idle_timeout_s: Option<i32>,
        ports: &serde_json::Value,
        extra: &[&str],
    ) -> Self {
        let db = TestDb::new().await;
        // A development environment: tokens are minted without issuer and audience.
        let env = format!("dev-e{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let local_dir = std::env::temp_dir().join(format!("berth-e2e-{env}"));
        sqlx::query(
            "INSERT INTO runtimes (name, image, ports, readiness, needs_tty, memory_mib, idle_timeout_s) VALUES ('desktop', $1, \
             $3, '{\"http\": {\"port\": 8080, \"path\": \"/ready\"}}', true, 64, $2)",
        )
        .bind(std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth-test-app:1".into()))
        .bind(idle_timeout_s)
        .bind(ports)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO instance_types (name, vcpus, memory_mib, capacity) VALUES ('local', 2, 4096, 2)").execute(&db.pool).await.unwrap();
        sqlx::query("INSERT INTO regions (name, target_free_slots, max_hosts, instance_types) VALUES ($1, $2, $3, ARRAY['local'])")
            .bind(REGION)
            .bind(target_free_slots)
            .bind(max_hosts)
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO images (region, image_id, client_sha, status) VALUES ($1, 'local-image', '', 'CURRENT')")
            .bind(REGION)
            .execute(&db.pool)
            .await
            .unwrap();
        let binary = host_binary();
        let argv = [
            "scaling-service",
            "--database-url",
            &db.url,
            "--env",
            &env,
            "--port",
            "0",
            "--listen-ip",
            "127.0.0.1",
            "--provider",
            "local",
            "--local-host-binary",
            &binary.display().to_string(),
            "--local-dir",
            &local_dir.display().to_string(),
            "--auth-hs256-secret",
            SECRET,
            "--operator-token",
            berth_testing::OPERATOR_TOKEN,
            "--tick-secs",
            "1",
            "--heartbeat-secs",
            "1",
            "--unreachable-grace-secs",
            "3",
            "--log-filter",
            "warn",
        ];
        // A flag in `extra` replaces the default one (clap refuses repeats).
        let mut argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        for flag in extra.iter().filter(|a| a.starts_with("--")) {
            if let Some(i) = argv.iter().position(|a| a == flag) {
                argv.drain(i..i + 2);
            }
        }
        argv.extend(extra.iter().map(|a| a.to_string()));
        let config = Cli::try_parse_from(&argv).unwrap().config;
        // Kept, so tests can serve a local host's instance metadata.
        let local = Arc::new(LocalProvider::new(LocalSettings::of(&config)).unwrap());
        let service = service::start_with_provider(config, local.clone())
            .await
            .expect("the scaling service starts");
        let url = format!("http://{}", service.addr);
        // A restarted scaler listens where its hosts were told the control plane is.
        let at = argv.iter().position(|a| a == "--port").unwrap() + 1;
        argv[at] = service.addr.port().to_string();
        let hosts = LocalHosts {
            dir: local_dir.clone(),
            env: env.clone(),
            scaler: Some(service.scaler.clone()),
        };
        Self {
            db,
            service: Some(service),
            local,
            url,
            _hosts: hosts,
            env,
            local_dir,
            argv,
        }
    }

    /// Stops the scaling service (its hosts keep running), as a crash or a
    /// deploy of the scaler would.
    pub async fn stop_scaler(&mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
    }

    /// Starts the scaling service again with the same settings, retrying while
    /// it cannot (as systemd would restart it), for at most `limit`.
    pub async fn restart_scaler(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            let config = Cli::try_parse_from(&self.argv).unwrap().config;
            match service::start(config).await {
                Ok(service) => {
                    self.url = format!("http://{}", service.addr);
                    self._hosts.scaler = Some(service.scaler.clone());
                    self.service = Some(service);
                    return;
                }
                Err(error) => {
                    assert!(
                        started.elapsed() < limit,
                        "the scaler did not start again within {limit:?}: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The pid of a local host's host-service process, from its record.
    pub fn host_pid(&self, host: &str) -> i32 {
        let record = self.local_dir.join(&self.env).join(format!("{host}.json"));
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        record["pid"].as_i64().unwrap() as i32
    }

    pub fn user(&self, name: &str) -> ScalerClient {
        ScalerClient::new(
            &self.url,
            &dev_user_token(SECRET, name, None, None, Duration::from_secs(600)),
        )
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// The fleet as the database has it (hosts with their status, sessions
    /// per host and status, free slots): what a failing test prints.
    pub async fn describe(&self) -> String {
        let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT h.id, h.status::text, h.status_reason, \
                    coalesce((SELECT string_agg(s.status::text || '×' || s.n, ' ') FROM \
                      (SELECT status, count(*) AS n FROM sessions WHERE host_id = h.id GROUP BY status) s), 'no sessions') \
             FROM hosts h ORDER BY h.id",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap_or_default();
        rows.iter()
            .map(|(id, status, reason, sessions)| {
                format!(
                    "{id} {status} ({}): {sessions}",
                    reason.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn wait(&self, what: &str, timeout: Duration, sql: &str, expected: i64) {
        let started = Instant::now();
        loop {
            let got = self.count(sql).await;
            if got == expected {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}: {got} ≠ {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn warm(&self, hosts: i64, sessions: i64) {
        self.wait(
            "ACTIVE hosts",
            Duration::from_secs(120),
            "SELECT count(*) FROM hosts WHERE status = 'ACTIVE'",
            hosts,
        )
        .await;
        self.wait(
            "warm sessions",
            Duration::from_secs(120),
            "SELECT count(*) FROM sessions WHERE status = 'WAITING'",
            sessions,
        )
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
        scaling_service::provider::local::remove_all(&self.local_dir, &self.env);
        berth_testing::remove_tree(&self.local_dir);
        self.db.drop_database().await;
    }
}

/// Stops the system's local hosts when dropped: a test that fails half-way
/// still leaves no host process or container behind.
pub struct LocalHosts {
    dir: PathBuf,
    env: String,
    /// The scaler that launches them, stopped first: left running it would
    /// launch replacements for the hosts stopped here, which nothing stops.
    scaler: Option<Arc<Scaler>>,
}

impl Drop for LocalHosts {
    fn drop(&mut self) {
        if let Some(scaler) = self.scaler.take() {
            scaler.stop.cancel();
            scaler.tasks.close();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                    tokio::task::block_in_place(|| {
                        runtime.block_on(async {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(10), scaler.tasks.wait())
                                    .await;
                        })
                    });
                }
            }
        }
        scaling_service::provider::local::remove_all(&self.dir, &self.env);
    }
}

/// Assign (retrying while warm rows appear) and configure a session.
pub async fn running_session(user: &ScalerClient, csid: &str) -> (Assigned, String, u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let assigned = loop {
        match user.assign("desktop", &[REGION], Some(csid)).await {
            Ok(a) => break a,
            Err(e) if e.code() == Some("NO_CAPACITY") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("assign failed: {e}"),
        }
    };
    let token = assigned
        .token
        .clone()
        .expect("a new session comes with its token");
    let ports = HostClient::pinned(&assigned.host)
        .unwrap()
        .json_transport(&assigned.session_id, &token, &json!({"csid": csid}))
        .await
        .unwrap();
    (assigned, token, ports[0].host_port.expect("a public port"))
}
/// Waits until no IP address of this machine is still changing: the warm
/// containers' veths get IPv6 link-local addresses 1–2 s after they come
/// up (duplicate address detection), and Chromium aborts every request in
/// flight on any address change (ERR_NETWORK_CHANGED, "Your connection was
/// interrupted"). Settled: no tentative address, nothing changed for
/// ADDRESSES_QUIET. For browser tests to call before driving Chromium.
pub async fn wait_for_settled_addresses() {
    /// Addresses still changing after this are not settling.
    const ADDRESSES_DEADLINE: Duration = Duration::from_secs(20);
    const ADDRESSES_QUIET: Duration = Duration::from_millis(500);
    const POLL: Duration = Duration::from_millis(100);
    /// IFA_F_TENTATIVE in /proc/net/if_inet6's flags column.
    const TENTATIVE: u32 = 0x40;
    let read = || std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    let tentative = |table: &str| {
        table.lines().any(|line| {
            line.split_whitespace()
                .nth(4)
                .and_then(|flags| u32::from_str_radix(flags, 16).ok())
                .is_some_and(|flags| flags & TENTATIVE != 0)
        })
    };
    let deadline = Instant::now() + ADDRESSES_DEADLINE;
    let mut table = read();
    let mut unchanged_since = Instant::now();
    loop {
        if !tentative(&table) && unchanged_since.elapsed() >= ADDRESSES_QUIET {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the machine's IPv6 addresses still changed after {ADDRESSES_DEADLINE:?} \
             (Chromium would abort requests with ERR_NETWORK_CHANGED):\n{table}"
        );
        tokio::time::sleep(POLL).await;
        let now = read();
        if now != table {
            table = now;
            unchanged_since = Instant::now();
        }
    }
}

pub mod gateway;
