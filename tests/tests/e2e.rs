//! The whole system on one machine, every part real: the scaling service
//! with the local provider starts host-service processes, which run Docker
//! containers of the test app; a client gets, configures, uses and ends
//! sessions through the public APIs only.

mod support;

use std::time::{Duration, Instant};

use berth_tests::client::HostClient;
use serde_json::json;
use support::*;

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
    let pid = system.host_pid(&victim);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // Silent for 3 heartbeats → UNREACHABLE; past its grace → TERMINATING →
    // terminated → row gone.
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
