//! SIGTERM stops only the daemon (sessions keep running and the next start
//! adopts them); DRAINING ends the host.

#[path = "host_support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use berth_common::SessionId;
use host_service::daemon::Exit;
use support::*;
use uuid::Uuid;

async fn running_session(db: &TestDb, th: &TestHost) -> (Uuid, String, u64) {
    let (id, token) = allocate(&db.pool, &th.host_id, "user").await;
    let response = th.json_transport(&token, id, "{\"k\": 1}").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    (id, token, body["ports"][0]["host_port"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_sessions_running_and_a_restart_adopts_them() {
    let (db, host_id, state_dir, argv) = process_host(2).await;
    let spawn = || {
        KillOnDrop(
            std::process::Command::new(host_binary())
                .args(&argv[1..])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting host-service"),
        )
    };
    let mut child = spawn();
    eventually("registration", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, String>("SELECT status::text FROM hosts WHERE id = $1")
            .bind(&host_id)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
            .as_deref()
            == Some("ACTIVE")
    })
    .await;
    let (api_port, cert): (i32, String) =
        sqlx::query_as("SELECT api_port, cert_sha256 FROM hosts WHERE id = $1")
            .bind(&host_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    eventually("2 warm sessions", Duration::from_secs(60), || async {
        count_status(&db.pool, &host_id, "WAITING").await == 2
    })
    .await;

    // A running session, made through the process's HTTPS API.
    let (id, token) = allocate(&db.pool, &host_id, "user").await;
    let client = pinned_client(&cert);
    let url = |p: &str| format!("https://127.0.0.1:{api_port}{p}");
    let response = client
        .put(url("/json_transport"))
        .bearer_auth(&token)
        .json(&json_transport_body(id, "{\"k\": 1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let host_port = response.json::<serde_json::Value>().await.unwrap()["ports"][0]["host_port"]
        .as_u64()
        .unwrap();

    // SIGTERM: the daemon exits 0, promptly, and the session keeps serving.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        started.elapsed()
    );
    let served = reqwest::get(format!("http://127.0.0.1:{host_port}/config.json"))
        .await
        .unwrap();
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        b"{\"k\": 1}",
        "the session still serves without the daemon"
    );
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("RUNNING")
    );

    // Restart: the same certificate, the session adopted, nothing duplicated.
    let child = spawn();
    eventually(
        "the restarted daemon to answer for the adopted session",
        Duration::from_secs(30),
        || async {
            // The new process listens on a new port (127.0.0.1:0); the row says which.
            let Ok(port) = sqlx::query_scalar::<_, i32>("SELECT api_port FROM hosts WHERE id = $1")
                .bind(&host_id)
                .fetch_one(&db.pool)
                .await
            else {
                return false;
            };
            let url = format!("https://127.0.0.1:{port}/sessions/{id}");
            match client.get(url).bearer_auth(&token).send().await {
                Ok(r) if r.status() == 200 => {
                    r.json::<serde_json::Value>().await.unwrap()["status"] == "RUNNING"
                }
                _ => false,
            }
        },
    )
    .await;
    let cert_after: String = sqlx::query_scalar("SELECT cert_sha256 FROM hosts WHERE id = $1")
        .bind(&host_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        cert_after, cert,
        "the pinned certificate survives a restart"
    );
    eventually(
        "the pool back at 1 warm + 1 running",
        Duration::from_secs(30),
        || async { count_status(&db.pool, &host_id, "WAITING").await == 1 },
    )
    .await;
    let containers = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.host={host_id}"),
    ]);
    assert_eq!(
        containers.split_whitespace().count(),
        2,
        "one running + one warm container, nothing leaked"
    );
    assert_eq!(free_slots(&db.pool, &host_id).await, 1);

    drop(child);
    remove_host_containers(&host_id);
    berth_testing::remove_tree(&state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_stops_warm_sessions_lets_running_ones_finish_then_terminates() {
    let (db, mut th) = warm_host(3, &["--drain-deadline-secs", "2"]).await;
    let (id, _token, _port) = running_session(&db, &th).await;

    sqlx::query("UPDATE hosts SET status = 'DRAINING' WHERE id = $1")
        .bind(&th.host_id)
        .execute(&db.pool)
        .await
        .unwrap();
    eventually("warm sessions gone", Duration::from_secs(20), || async {
        count_status(&db.pool, &th.host_id, "WAITING").await == 0
    })
    .await;
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("RUNNING"),
        "a running session may finish"
    );
    let readyz = th.client().get(th.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503, "a draining host is not ready");

    // Past the deadline the rest is stopped and the host ends.
    let daemon = th.daemon.take().unwrap();
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        daemon.run_until(std::future::pending()),
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Drained);
    assert_eq!(session_status(&db.pool, id).await, None);
    let status: String = sqlx::query_scalar("SELECT status::text FROM hosts WHERE id = $1")
        .bind(&th.host_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "TERMINATING");
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=berth.host={}", th.host_id),
    ]);
    assert!(
        left.trim().is_empty(),
        "no container outlives the drain: {left}"
    );
    assert!(th.host.session(SessionId(id)).is_none());
    th.cleanup().await;
}
