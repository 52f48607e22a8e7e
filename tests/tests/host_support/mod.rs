//! Harness for host-service's tests on the real parts: a fresh PostgreSQL
//! database per test (from DATABASE_URL) with its own control plane (the
//! real scaling-service, in this process, serving the host API the daemon
//! talks to), the real Docker engine with the locally built test image
//! (BERTH_TEST_IMAGE), and the daemon itself in-process or as a process.
//! Tests read and change rows directly, as the scaler's assign or an
//! operator would; the daemon only ever sees the control plane.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_common::auth::new_session_token;
use berth_common::{db, tls};
use clap::Parser;
use host_service::config::Cli;
use host_service::daemon::{self, Daemon};
use host_service::host::Host;
use scaling_service::host_api::identity::{issue_for_host, HandStartedHost};
use scaling_service::service::{self, Service};
use sqlx::PgPool;
use uuid::Uuid;

pub const RUNTIME: &str = "test-app";

pub fn test_image() -> String {
    std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth-test-app:1".to_owned())
}

pub use berth_testing::eventually;

/// The HS256 secret test control planes verify user tokens with.
pub const USER_SECRET: &str = "host-tests-user-token-secret-of-32-bytes";

/// A test's database and the control plane serving it.
pub struct TestDb {
    inner: berth_testing::TestDb,
    control: Option<Service>,
    /// Where hosts reach the control plane (the same across restarts).
    pub control_url: String,
    control_argv: Vec<String>,
    /// The control plane's local-provider directory (it launches nothing).
    _local_dir: RemovedOnDrop,
}

/// A directory that goes with the test, pass or fail.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TestDb {
    type Target = berth_testing::TestDb;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl TestDb {
    /// A fresh, migrated database and a control plane on it.
    pub async fn new() -> Self {
        let inner = berth_testing::TestDb::new().await;
        let local_dir = std::env::temp_dir().join(format!("berth-cp-{}", inner.name));
        let mut argv: Vec<String> = [
            "scaling-service",
            "--database-url",
            &inner.url,
            "--env",
            "dev-hosttest",
            "--port",
            "0",
            "--listen-ip",
            "127.0.0.1",
            "--provider",
            "local",
            "--local-dir",
            &local_dir.display().to_string(),
            "--auth-hs256-secret",
            USER_SECRET,
            "--operator-token",
            berth_testing::OPERATOR_TOKEN,
            "--log-filter",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let control = start_control_plane(&argv).await;
        // A restarted control plane listens where its hosts were told it is.
        let at = argv.iter().position(|a| a == "--port").unwrap() + 1;
        argv[at] = control.addr.port().to_string();
        Self {
            control_url: format!("http://{}", control.addr),
            inner,
            control: Some(control),
            control_argv: argv,
            _local_dir: RemovedOnDrop(local_dir),
        }
    }

    /// A bootstrap token for a host started by hand with this id and capacity
    /// (as `scaling-service host-token` prints it).
    pub async fn host_token(&self, host_id: &str, capacity: u16) -> String {
        let host = HandStartedHost {
            id: berth_common::HostId::parse(host_id).unwrap(),
            region: "local".into(),
            image_id: "local".into(),
            instance_type: "local".into(),
            capacity: i32::from(capacity),
        };
        issue_for_host(&self.pool, &host, 600)
            .await
            .expect("issuing a bootstrap token")
    }

    /// Stops the control plane, as a crash or a deploy of it would; hosts
    /// keep running.
    pub async fn stop_control_plane(&mut self) {
        if let Some(control) = self.control.take() {
            control.stop().await;
        }
    }

    /// Starts the control plane again on the same address.
    pub async fn start_control_plane(&mut self) {
        if self.control.is_none() {
            self.control = Some(start_control_plane(&self.control_argv).await);
        }
    }

    /// Stops the control plane and drops the database.
    pub async fn drop_database(mut self) {
        self.stop_control_plane().await;
        self.inner.drop_database().await;
    }
}

async fn start_control_plane(argv: &[String]) -> Service {
    let config = scaling_service::config::Cli::try_parse_from(argv)
        .expect("valid scaling-service arguments")
        .config;
    // The port may still be held for a moment by the control plane just stopped.
    let started = std::time::Instant::now();
    loop {
        match service::start(config.clone()).await {
            Ok(service) => return service,
            Err(error @ scaling_service::Error::Bind { .. })
                if started.elapsed() < Duration::from_secs(10) =>
            {
                eprintln!("control plane not started yet ({error}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the control plane does not start: {error}"),
        }
    }
}

/// The host-service binary of this test run.
pub fn host_binary() -> PathBuf {
    berth_testing::workspace_binary("host-service")
}

/// Adds the test runtime (the locally built app image) to a test database.
pub async fn add_runtime(db: &TestDb, name: &str, env: serde_json::Value, ready_timeout_s: i32) {
    sqlx::query(
        "INSERT INTO runtimes (name, image, ports, env, memory_mib, needs_tty, needs_uinput, readiness, ready_timeout_s) \
         VALUES ($1, $2, '[{\"container_port\": 8080, \"protocol\": \"tcp\"}]', $3, 64, true, true, \
                 '{\"http\": {\"port\": 8080, \"path\": \"/ready\"}}', $4)",
    )
    .bind(name)
    .bind(test_image())
    .bind(env)
    .bind(ready_timeout_s)
    .execute(&db.pool)
    .await
    .expect("inserting the test runtime");
}
/// Distinct host port ranges per daemon in this test binary.
static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(0);

pub struct HostArgs {
    pub capacity: u16,
    pub runtime: &'static str,
    pub extra: Vec<String>,
}

impl Default for HostArgs {
    fn default() -> Self {
        Self {
            capacity: 2,
            runtime: RUNTIME,
            extra: vec![],
        }
    }
}

pub struct TestHost {
    pub daemon: Option<Daemon>,
    pub host: Arc<Host>,
    pub api: SocketAddr,
    pub cert_sha256: String,
    pub host_id: String,
    pub state_dir: PathBuf,
    pub args: Vec<String>,
}

/// A host's command line: registered with a fresh bootstrap token of `db`'s
/// control plane.
pub async fn host_args(
    db: &TestDb,
    args: &HostArgs,
    host_id: &str,
    state_dir: &std::path::Path,
) -> Vec<String> {
    let token = db.host_token(host_id, args.capacity).await;
    let block = NEXT_PORT_BLOCK.fetch_add(1, Ordering::SeqCst);
    let low = 21_000 + block * 100 + (std::process::id() % 50) as u16 * 200;
    let mut argv: Vec<String> = [
        "host-service",
        "--control-url",
        &db.control_url,
        "--host-token",
        &token,
        "--local",
        "--local-host-id",
        host_id,
        "--local-capacity",
        &args.capacity.to_string(),
        "--state-dir",
        &state_dir.display().to_string(),
        "--api-addr",
        "127.0.0.1:0",
        "--port-range",
        &format!("{low}-{}", low + 99),
        "--publish-ip",
        "127.0.0.1",
        "--runtime",
        args.runtime,
        "--stop-grace-secs",
        "2",
        "--uinput",
        "auto",
        "--operator-token",
        berth_testing::OPERATOR_TOKEN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(args.extra.iter().cloned());
    argv
}

pub async fn start_host(db: &TestDb, args: HostArgs) -> TestHost {
    let host_id = format!("t-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let state_dir = std::env::temp_dir().join(format!("berth-state-{host_id}"));
    let argv = host_args(db, &args, &host_id, &state_dir).await;
    start_with(argv, host_id, state_dir).await
}

pub async fn start_with(argv: Vec<String>, host_id: String, state_dir: PathBuf) -> TestHost {
    let cli = Cli::try_parse_from(&argv).expect("valid host-service arguments");
    let daemon = daemon::start(cli.config)
        .await
        .expect("host-service starts");
    TestHost {
        host: daemon.host.clone(),
        api: daemon.api_addr,
        cert_sha256: daemon.cert_sha256.clone(),
        daemon: Some(daemon),
        host_id,
        state_dir,
        args: argv,
    }
}

impl TestHost {
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api.port())
    }

    pub fn client(&self) -> reqwest::Client {
        pinned_client(&self.cert_sha256)
    }

    /// `PUT /json_transport` as a client sends it.
    pub async fn json_transport(
        &self,
        token: &str,
        id: Uuid,
        json_data: &str,
    ) -> reqwest::Response {
        self.client()
            .put(self.url("/json_transport"))
            .bearer_auth(token)
            .json(&json_transport_body(id, json_data))
            .send()
            .await
            .expect("json_transport request")
    }

    /// `DELETE /sessions/<id>` with `token`.
    pub async fn delete_session(&self, token: &str, id: Uuid) -> reqwest::Response {
        self.client()
            .delete(self.url(&format!("/sessions/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("delete request")
    }

    /// Stops the daemon and removes every container it made and its state.
    pub async fn cleanup(mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
        remove_host_containers(&self.host_id);
        // User volumes stay mounted for a restarted daemon to adopt; unmount
        // them (and the shared mount under them) before deleting anything,
        // or removing the state would reach into users' data.
        let volumes = self.state_dir.join("volumes");
        if volumes.exists() {
            let _ = Command::new("umount")
                .args(["--recursive", "--lazy"])
                .arg(&volumes)
                .stderr(std::process::Stdio::null())
                .status();
        }
        berth_testing::remove_tree(&self.state_dir);
    }
}

/// Kills a daemon process when the test ends, pass or fail.
#[allow(unused_imports)] // not every test binary runs the daemon as a process
pub use berth_testing::KillOnDrop;

/// For tests that run the daemon as a process: a fresh database with the test
/// runtime, and the host id, state dir and arguments of a host of `capacity`.
pub async fn process_host(capacity: u16) -> (TestDb, String, PathBuf, Vec<String>) {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let host_id = format!("t-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let state_dir = std::env::temp_dir().join(format!("berth-state-{host_id}"));
    let argv = host_args(
        &db,
        &HostArgs {
            capacity,
            ..Default::default()
        },
        &host_id,
        &state_dir,
    )
    .await;
    (db, host_id, state_dir, argv)
}

/// Removes every container of a host. A daemon killed mid-create leaves
/// requests Docker still completes, so removal repeats until the host has
/// had no container for two looks 300 ms apart (at most 10 s).
pub fn remove_host_containers(host_id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut quiet_looks = 0;
    while quiet_looks < 2 && std::time::Instant::now() < deadline {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.host={host_id}"),
        ]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            quiet_looks += 1;
        } else {
            quiet_looks = 0;
            let mut argv = vec!["rm", "-f"];
            argv.extend(ids);
            docker(&argv);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn pinned_client(pin: &str) -> reqwest::Client {
    let config = tls::pinned_client_config(pin).expect("valid pin");
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("building the test client")
}

/// Runs the docker CLI and returns stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn docker_status(args: &[&str]) -> (bool, Vec<u8>) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI");
    (out.status.success(), out.stdout)
}

pub async fn count_status(pool: &PgPool, host_id: &str, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sessions WHERE host_id = $1 AND status::text = $2")
        .bind(host_id)
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn free_slots(pool: &PgPool, host_id: &str) -> i32 {
    sqlx::query_scalar("SELECT free_slots FROM hosts WHERE id = $1")
        .bind(host_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub async fn session_status(pool: &PgPool, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status::text FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// What the scaler's assign does, reduced to one host: take a warm session,
/// mark it ALLOCATED for `user` with a fresh token, take the free slot.
pub async fn allocate(pool: &PgPool, host_id: &str, user: &str) -> (Uuid, String) {
    let token = new_session_token();
    let mut tx = pool.begin().await.unwrap();
    let id: Uuid = sqlx::query_scalar(
        "WITH picked AS (SELECT id FROM sessions WHERE host_id = $1 AND status = 'WAITING' \
                         ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         UPDATE sessions s SET status = 'ALLOCATED', user_id = $2, token_sha256 = $3, allocated_at = now() \
         FROM picked WHERE s.id = picked.id RETURNING s.id",
    )
    .bind(host_id)
    .bind(user)
    .bind(&token.sha256_hex)
    .fetch_one(&mut *tx)
    .await
    .expect("a warm session to allocate");
    let host = berth_common::HostId::parse(host_id).unwrap();
    db::take_free_slot(&mut *tx, &host)
        .await
        .unwrap()
        .expect("a free slot");
    tx.commit().await.unwrap();
    (id, token.token)
}

/// The usual start: a fresh database with the test runtime, a host of
/// `capacity` slots (plus `extra` flags), its warm pool full.
pub async fn warm_host(capacity: u16, extra: &[&str]) -> (TestDb, TestHost) {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let extra = extra.iter().map(|s| s.to_string()).collect();
    let th = start_host(
        &db,
        HostArgs {
            capacity,
            extra,
            ..Default::default()
        },
    )
    .await;
    wait_warm(&db, &th, i64::from(capacity)).await;
    (db, th)
}

pub async fn wait_warm(db: &TestDb, host: &TestHost, n: i64) {
    eventually(
        &format!("{n} warm sessions"),
        Duration::from_secs(60),
        || async { count_status(&db.pool, &host.host_id, "WAITING").await == n },
    )
    .await;
}

pub fn json_transport_body(id: Uuid, json_data: &str) -> serde_json::Value {
    serde_json::json!({"session_id": id.to_string(), "json_data": json_data})
}
