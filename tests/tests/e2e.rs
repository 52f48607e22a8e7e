//! The whole system on one machine, every part real: the scaling service
//! with the local provider starts host-service processes, which run Docker
//! containers of the test app; a client gets, configures, uses and ends
//! sessions through the public APIs only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_common::testing::TestDb;
use berth_tests::client::{dev_user_token, Assigned, HostClient, ScalerClient};
use clap::Parser;
use scaling_service::config::Cli;
use scaling_service::service::{self, Service};
use serde_json::json;

const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-012345";
const REGION: &str = "local";

/// Local hosts of concurrently running tests would share slots (port and TTY
/// ranges); one system at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn host_binary() -> PathBuf {
    // target/debug/deps/e2e-… → target/debug/host-service
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("host-service"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p host-service); scripts/test does",
        bin.display()
    );
    bin
}

struct System {
    db: TestDb,
    service: Option<Service>,
    url: String,
    env: String,
    local_dir: PathBuf,
}

impl System {
    async fn start(target_free_slots: i32, max_hosts: i32) -> Self {
        Self::start_with_idle_timeout(target_free_slots, max_hosts, None).await
    }

    async fn start_with_idle_timeout(
        target_free_slots: i32,
        max_hosts: i32,
        idle_timeout_s: Option<i32>,
    ) -> Self {
        let db = TestDb::new().await;
        let env = format!("e{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let local_dir = std::env::temp_dir().join(format!("berth-e2e-{env}"));
        sqlx::query(
            "INSERT INTO runtimes (name, image, ports, readiness, needs_tty, memory_mib, idle_timeout_s) VALUES ('desktop', $1, \
             '[{\"container_port\": 8080, \"protocol\": \"tcp\"}]', '{\"http\": {\"port\": 8080, \"path\": \"/ready\"}}', true, 64, $2)",
        )
        .bind(std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth-test-app:1".into()))
        .bind(idle_timeout_s)
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
            "--tick-secs",
            "1",
            "--heartbeat-secs",
            "1",
            "--log-filter",
            "warn",
        ];
        let config = Cli::try_parse_from(argv).unwrap().config;
        let service = service::start(config)
            .await
            .expect("the scaling service starts");
        let url = format!("http://{}", service.addr);
        Self {
            db,
            service: Some(service),
            url,
            env,
            local_dir,
        }
    }

    fn user(&self, name: &str) -> ScalerClient {
        ScalerClient::new(
            &self.url,
            &dev_user_token(SECRET, name, None, None, Duration::from_secs(600)),
        )
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn wait(&self, what: &str, timeout: Duration, sql: &str, expected: i64) {
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

    async fn warm(&self, hosts: i64, sessions: i64) {
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

    async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
        scaling_service::provider::local::remove_all(&self.local_dir, &self.env);
        let _ = std::fs::remove_dir_all(&self.local_dir);
        self.db.drop_database().await;
    }
}

/// Assign (retrying while warm rows appear) and configure a session.
async fn running_session(user: &ScalerClient, csid: &str) -> (Assigned, String, u16) {
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
    (assigned, token, ports[0].host_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_configures_uses_and_ends_a_session_and_the_slot_comes_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let system = System::start(4, 3).await;
    system.warm(2, 4).await;
    let alice = system.user("alice");
    let (assigned, _token, port) = running_session(&alice, "s-1").await;
    let app = reqwest::get(format!("http://127.0.0.1:{port}/config.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        app,
        json!({"csid": "s-1"}).to_string(),
        "the client's config reached the app, and the app is reachable"
    );
    let listed = alice.sessions().await.unwrap();
    assert_eq!(listed["sessions"][0]["status"], "RUNNING");
    let host = assigned.host.id.clone();
    let free_before: i64 = system
        .count(&format!(
            "SELECT free_slots::bigint FROM hosts WHERE id = '{host}'"
        ))
        .await;
    assert_eq!(free_before, 1);

    alice.delete(&assigned.session_id).await.unwrap();
    system
        .wait(
            "the session row gone",
            Duration::from_secs(30),
            &format!(
                "SELECT count(*) FROM sessions WHERE id = '{}'",
                assigned.session_id
            ),
            0,
        )
        .await;
    system
        .wait(
            "its slot back",
            Duration::from_secs(10),
            &format!("SELECT free_slots::bigint FROM hosts WHERE id = '{host}'"),
            2,
        )
        .await;
    let container = format!("berth-{}", assigned.session_id);
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "the container is gone");
    // Taking a slot put the buffer below target, so a third host came (max 3);
    // with the session gone every slot of the three is warm again.
    system.warm(3, 6).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_token_cannot_touch_a_session() {
    let _one = ONE_AT_A_TIME.lock().await;
    let system = System::start(4, 3).await;
    system.warm(2, 4).await;
    let (alice, bob) = (system.user("alice"), system.user("bob"));
    let (a, _a_token, port) = running_session(&alice, "a").await;
    let (b, b_token, _) = running_session(&bob, "b").await;
    assert_eq!(
        bob.session(&a.session_id).await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        bob.delete(&a.session_id).await.unwrap_err().status(),
        Some(404)
    );
    // Bob's session token opens Bob's session only, on any host.
    let on_host = HostClient::pinned(&a.host).unwrap();
    assert_eq!(
        on_host
            .status(&a.session_id, &b_token)
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );
    assert_eq!(
        on_host
            .delete(&a.session_id, &b_token)
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );
    let conflict = on_host
        .json_transport(&a.session_id, &b_token, &json!({"evil": true}))
        .await
        .unwrap_err();
    assert_eq!(conflict.status(), Some(403));
    // Alice's session is untouched.
    let app = reqwest::get(format!("http://127.0.0.1:{port}/config.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(app, json!({"csid": "a"}).to_string());
    assert_eq!(
        alice.session(&a.session_id).await.unwrap()["status"],
        "RUNNING"
    );
    let _ = b;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_refills_after_sessions_are_taken() {
    let _one = ONE_AT_A_TIME.lock().await;
    let system = System::start(4, 4).await;
    system.warm(2, 4).await;
    for user in ["u1", "u2", "u3"] {
        running_session(&system.user(user), user).await;
    }
    // 1 free slot left of a 4-slot target: the scaler adds 2 hosts (cap 4).
    system.warm(4, 5).await;
    let hosts = system.count("SELECT count(*) FROM hosts").await;
    assert_eq!(hosts, 4, "never above max_hosts");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_process_is_drained_terminated_and_replaced() {
    let _one = ONE_AT_A_TIME.lock().await;
    let system = System::start(4, 3).await;
    system.warm(2, 4).await;
    let victim: String = sqlx::query_scalar("SELECT id FROM hosts ORDER BY id LIMIT 1")
        .fetch_one(&system.db.pool)
        .await
        .unwrap();
    let record = system
        .local_dir
        .join(&system.env)
        .join(format!("{victim}.json"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // Silent for 3 heartbeats → DRAINING → TERMINATING → terminated → row gone.
    system
        .wait(
            "the dead host's row removed",
            Duration::from_secs(60),
            &format!("SELECT count(*) FROM hosts WHERE id = '{victim}'"),
            0,
        )
        .await;
    let left = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.host={victim}"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "the dead host's containers are removed"
    );
    // And a replacement restores the buffer.
    system.warm(2, 4).await;
    let hosts: Vec<String> = sqlx::query_scalar("SELECT id FROM hosts")
        .fetch_all(&system.db.pool)
        .await
        .unwrap();
    assert!(!hosts.contains(&victim));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_reaped_and_its_user_is_told_why() {
    let _one = ONE_AT_A_TIME.lock().await;
    let system = System::start_with_idle_timeout(2, 1, Some(2)).await;
    system.warm(1, 2).await;
    let (alice, bob) = (system.user("alice"), system.user("bob"));
    let (assigned, _token, _) = running_session(&alice, "idle-1").await;
    let id = assigned.session_id.clone();

    // Nobody uses it: within the timeout plus a check or two, it is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        let status = alice.session(&id).await.unwrap();
        if status["status"] != "RUNNING" && status["status"] != "DYING" {
            break status;
        }
        assert!(Instant::now() < deadline, "not reaped in 30 s: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended["status"], "REAPED", "{ended}");
    let reason = ended["status_reason"].as_str().unwrap();
    assert!(reason.contains("idle"), "{reason}");
    assert!(ended["ended_at"].is_string());
    let listed = alice.sessions().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 0);
    assert_eq!(listed["ended"][0]["session_id"], id);
    assert_eq!(listed["ended"][0]["status"], "REAPED");
    // Another user learns nothing about it.
    let theirs = bob.session(&id).await.unwrap_err();
    assert_eq!(theirs.status(), Some(404));
    assert_eq!(bob.sessions().await.unwrap()["ended"], json!([]));
    // Its slot came back to the buffer.
    system
        .wait(
            "the slot back",
            Duration::from_secs(30),
            "SELECT count(*) FROM sessions WHERE status = 'WAITING'",
            2,
        )
        .await;
    system.stop().await;
}
