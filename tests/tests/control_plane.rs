//! The control plane as hosts live with it: two replicas on one database,
//! hosts streaming from either, assigns through either. A replica killed
//! with SIGKILL while hosts stream and assigns run moves its hosts to the
//! other within seconds; no allocation is lost, no running session is
//! disturbed, and a replica started again on the same address takes hosts
//! back when the other stops. Nothing is left behind.

#[path = "host_support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::client::{dev_user_token, Assigned, HostClient, ScalerClient};
use support::*;

fn scaler_binary() -> std::path::PathBuf {
    berth_testing::workspace_binary("scaling-service")
}

/// A control-plane replica as its own process, on `port`.
fn replica(db: &TestDb, port: u16) -> KillOnDrop {
    // Beneath the test control plane's own directory, removed with it.
    let local_dir = std::env::temp_dir()
        .join(format!("berth-cp-{}", db.name))
        .join(port.to_string());
    let child = Command::new(scaler_binary())
        .args(["--database-url", &db.url, "--env", "dev-hosttest"])
        .args(["--port", &port.to_string(), "--listen-ip", "127.0.0.1"])
        .args(["--provider", "local", "--local-dir"])
        .arg(&local_dir)
        .args(["--auth-hs256-secret", USER_SECRET])
        .args(["--operator-token", berth_testing::OPERATOR_TOKEN])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting a scaling-service replica");
    KillOnDrop(child)
}

async fn wait_healthy(url: &str) {
    let client = reqwest::Client::new();
    eventually("the replica to serve", Duration::from_secs(30), || async {
        client
            .get(format!("{url}/healthz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Slots per host: two assigns may fill one host (fullest first) and host 1
/// still has one for the allocation made while its replica is dead.
const CAPACITY: u16 = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// A host of `db` told about the replicas in `urls`, in that order.
async fn host_of(db: &TestDb, urls: &[&str]) -> TestHost {
    let host_id = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let state_dir = std::env::temp_dir().join(format!("berth-state-{host_id}"));
    let args = HostArgs {
        capacity: CAPACITY,
        ..Default::default()
    };
    let mut argv = host_args(db, &args, &host_id, &state_dir).await;
    let at = argv.iter().position(|a| a == "--control-url").unwrap() + 1;
    argv[at] = urls.join(",");
    start_with(argv, host_id, state_dir).await
}

fn user(url: &str, name: &str) -> ScalerClient {
    ScalerClient::new(
        url,
        &dev_user_token(USER_SECRET, name, None, None, Duration::from_secs(600)),
    )
}

/// Assigns through the replica at `url` (retrying while it has no warm
/// session to give yet).
async fn assign(url: &str, name: &str) -> Assigned {
    let client = user(url, name);
    let started = Instant::now();
    loop {
        match client.assign(RUNTIME, &["local"], None).await {
            Ok(assigned) => return assigned,
            Err(error) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("assign for {name} not yet: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("assign for {name} through {url} failed: {error}"),
        }
    }
}

/// The allocation reaches its host through the host's stream: the host
/// claims it (CONNECTING) with no client call.
async fn claimed_by_its_host(db: &TestDb, assigned: &Assigned, within: Duration) {
    let id: uuid::Uuid = assigned.session_id.parse().unwrap();
    eventually(
        &format!("host {} to claim {id} from its stream", assigned.host.id),
        within,
        || async { session_status(&db.pool, id).await.as_deref() == Some("CONNECTING") },
    )
    .await;
}

async fn region(db: &TestDb) {
    // The controller neither launches (at max_hosts) nor drains (below target).
    sqlx::query(
        "INSERT INTO regions (name, target_free_slots, max_hosts) VALUES ('local', 100, 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO images (region, image_id, client_sha, status) VALUES ('local', 'local', '', 'CURRENT')")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_moves_its_hosts_to_the_other_and_loses_nothing() {
    let mut db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    region(&db).await;
    let a = db.control_url.clone();
    let b_port = free_port();
    let b = format!("http://127.0.0.1:{b_port}");
    let mut replica_b = replica(&db, b_port);
    wait_healthy(&b).await;

    // Host 1 prefers replica B, host 2 replica A.
    let host1 = host_of(&db, &[&b, &a]).await;
    let host2 = host_of(&db, &[&a, &b]).await;
    wait_warm(&db, &host1, CAPACITY.into()).await;
    wait_warm(&db, &host2, CAPACITY.into()).await;

    // Assigns through either replica reach hosts streaming from either.
    let first = assign(&b, "user-1").await;
    claimed_by_its_host(&db, &first, Duration::from_secs(10)).await;
    let token = first.token.clone().unwrap();
    let ports = HostClient::pinned(&first.host)
        .unwrap()
        .json_transport(&first.session_id, &token, &serde_json::json!({}))
        .await
        .expect("the first session runs");
    let app_port = ports[0].host_port.unwrap();
    let second = assign(&a, "user-2").await;
    claimed_by_its_host(&db, &second, Duration::from_secs(10)).await;

    // SIGKILL replica B; at once an allocation on host 1 (as an assign on A
    // would make it: host 1 hears of it only once it streams from A) and
    // assigns through A while host 1 reconnects.
    let killed_at = Instant::now();
    let _ = replica_b.0.kill();
    let _ = replica_b.0.wait();
    let (on_host1, _) = allocate(&db.pool, &host1.host_id, "user-on-host-1").await;
    let assigns = tokio::spawn({
        let a = a.clone();
        async move {
            let mut made = vec![];
            for n in 3..=4 {
                made.push(assign(&a, &format!("user-{n}")).await);
            }
            made
        }
    });
    let made = assigns.await.unwrap();
    for assigned in &made {
        claimed_by_its_host(&db, assigned, Duration::from_secs(10)).await;
    }
    eventually(
        "host 1 to claim the allocation made while its replica was dead",
        Duration::from_secs(10),
        || async { session_status(&db.pool, on_host1).await.as_deref() == Some("CONNECTING") },
    )
    .await;
    let moved_within = killed_at.elapsed();
    eprintln!("every allocation claimed {moved_within:?} after the kill");
    assert_eq!(
        host1.host.metrics.control_connected.get(),
        1,
        "host 1 streams again (from replica A)"
    );
    // The session that ran before the kill was not disturbed.
    let app = reqwest::get(format!("http://127.0.0.1:{app_port}/config.json"))
        .await
        .expect("the running session still serves");
    assert!(app.status().is_success());
    assert_eq!(
        session_status(&db.pool, first.session_id.parse().unwrap())
            .await
            .as_deref(),
        Some("RUNNING")
    );

    // B again, on the same address; A stops: host 2 moves to B.
    let _replica_b = replica(&db, b_port);
    wait_healthy(&b).await;
    db.stop_control_plane().await;
    // Free a slot on each host so B has something to hand out.
    for assigned in &made {
        HostClient::pinned(&assigned.host)
            .unwrap()
            .delete(&assigned.session_id, assigned.token.as_deref().unwrap())
            .await
            .expect("ending a session on its host");
    }
    let again = assign(&b, "user-5").await;
    claimed_by_its_host(&db, &again, Duration::from_secs(15)).await;

    // Nothing left behind: every container has its row and every row its container.
    for host in [&host1, &host2] {
        eventually(
            &format!("host {}: containers and rows to agree", host.host_id),
            Duration::from_secs(30),
            || async {
                let containers = docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=berth.host={}", host.host_id),
                ]);
                let rows: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM sessions WHERE host_id = $1")
                        .bind(&host.host_id)
                        .fetch_one(&db.pool)
                        .await
                        .unwrap();
                containers.split_whitespace().count() as i64 == rows
            },
        )
        .await;
    }
    host1.cleanup().await;
    host2.cleanup().await;
    db.drop_database().await;
}
