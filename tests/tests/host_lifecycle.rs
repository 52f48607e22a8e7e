//! The whole session lifecycle on real Docker and PostgreSQL:
//! WAITING → ALLOCATED → CONNECTING → RUNNING → teardown.

#[path = "host_support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

const JSON_DATA: &str =
    "{ \"user\": \"ada\",  \"dpi\": 192, \"nested\": {\"a\": [1, 2, 3]}, \"text\": \"é ✓\" }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_from_warm_to_running_and_teardown_leaves_nothing() {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let th = start_host(&db, HostArgs::default()).await;
    wait_warm(&db, &th, 2).await;

    let (id, token) = allocate(&db.pool, &th.host_id, "user-1").await;
    eventually(
        "the host to claim the allocation",
        Duration::from_secs(10),
        || async { session_status(&db.pool, id).await.as_deref() == Some("CONNECTING") },
    )
    .await;

    let response = th.json_transport(&token, id, JSON_DATA).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "RUNNING");
    assert_eq!(body["session_id"], id.to_string());
    let ports = body["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["container_port"], 8080);
    assert_eq!(ports[0]["protocol"], "tcp");
    let host_port = ports[0]["host_port"].as_u64().unwrap();
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("RUNNING")
    );

    // The client's bytes, exactly, inside the container.
    let container = format!("berth-{id}");
    let (ok, inside) = docker_status(&["exec", &container, "cat", "/berth/config.json"]);
    assert!(ok, "docker exec into the session container");
    assert_eq!(inside, JSON_DATA.as_bytes());

    // The session's host port reaches the app.
    let via_port = reqwest::get(format!("http://127.0.0.1:{host_port}/config.json"))
        .await
        .unwrap();
    assert_eq!(via_port.status(), 200);
    assert_eq!(
        via_port.bytes().await.unwrap().as_ref(),
        JSON_DATA.as_bytes()
    );

    // Labels record every allocation.
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &container]);
    let labels: serde_json::Value = serde_json::from_str(labels.trim()).unwrap();
    assert_eq!(labels["berth.session"], id.to_string());
    assert_eq!(labels["berth.host"], th.host_id);
    assert_eq!(labels["berth.runtime"], RUNTIME);
    let tty: u8 = labels["berth.tty"].as_str().unwrap().parse().unwrap();
    let label_ports: serde_json::Value =
        serde_json::from_str(labels["berth.ports"].as_str().unwrap()).unwrap();
    assert_eq!(label_ports, serde_json::Value::Array(ports.clone()));

    // Owner can read its status over the host API.
    let status: serde_json::Value = th
        .client()
        .get(th.url(&format!("/sessions/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "RUNNING");

    let deleted = th.delete_session(&token, id).await;
    assert_eq!(deleted.status(), 200);

    // Nothing left: no container, no directories, no row; TTY and port freed.
    assert!(
        !docker_status(&["inspect", &container]).0,
        "the container is removed"
    );
    for dir in ["sessions", "sockets", "logs"] {
        assert!(
            !th.state_dir.join(dir).join(id.to_string()).exists(),
            "{dir}/<id> is removed"
        );
    }
    assert_eq!(session_status(&db.pool, id).await, None);
    assert!(th.host.session(berth_common::SessionId(id)).is_none());
    // The slot came back and the pool refills.
    assert_eq!(free_slots(&db.pool, &th.host_id).await, 2);
    wait_warm(&db, &th, 2).await;
    // Once settled, exactly the live sessions hold TTYs and ports: the torn
    // down session's were released, not leaked.
    let live = th.host.sessions();
    assert_eq!(live.len(), 2);
    {
        let resources = th.host.resources();
        assert_eq!(resources.ports.in_use(), 2);
        assert_eq!(resources.ttys.in_use(), 2);
    }
    let mut tty_free = berth_host_tty_free(&th, tty);
    tty_free |= live.iter().any(|s| s.tty == Some(tty));
    assert!(
        tty_free,
        "TTY {tty} is either free or reused by a new session"
    );
    th.cleanup().await;
}

/// Whether `tty` could be handed out now (reserve succeeds, then undo).
fn berth_host_tty_free(th: &TestHost, tty: u8) -> bool {
    let mut resources = th.host.resources();
    let free = resources.ttys.reserve(tty);
    if free {
        resources.ttys.release(tty);
    }
    free
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sessions_at_once_get_distinct_ttys_and_ports() {
    let (db, th) = warm_host(20, &["--warm-concurrency", "20"]).await;
    let rows: Vec<(Option<i32>, serde_json::Value, String)> =
        sqlx::query_as("SELECT tty, ports, container_id FROM sessions WHERE host_id = $1")
            .bind(&th.host_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 20);
    let ttys: HashSet<i32> = rows
        .iter()
        .map(|r| r.0.expect("every session has a TTY"))
        .collect();
    let ports: HashSet<u64> = rows
        .iter()
        .flat_map(|r| {
            r.1.as_array()
                .unwrap()
                .iter()
                .map(|p| p["host_port"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(ttys.len(), 20, "distinct TTYs");
    assert_eq!(ports.len(), 20, "distinct host ports");
    // And Docker agrees with the rows.
    for (tty, _, container) in &rows {
        let label = docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"berth.tty\"}}",
            container,
        ]);
        assert_eq!(label.trim(), tty.unwrap().to_string());
        let device = docker(&[
            "inspect",
            "-f",
            "{{range .HostConfig.Devices}}{{.PathOnHost}} {{end}}",
            container,
        ]);
        assert!(
            device.contains(&format!("/dev/tty{}", tty.unwrap())),
            "{device}"
        );
    }
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_accepts_the_host_and_a_wrong_pin_fails() {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let th = start_host(
        &db,
        HostArgs {
            capacity: 1,
            ..Default::default()
        },
    )
    .await;
    let published: String = sqlx::query_scalar("SELECT cert_sha256 FROM hosts WHERE id = $1")
        .bind(&th.host_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        published, th.cert_sha256,
        "the host row publishes the certificate's fingerprint"
    );
    let ok = pinned_client(&published)
        .get(th.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let wrong = pinned_client(&"0".repeat(64))
        .get(th.url("/healthz"))
        .send()
        .await;
    assert!(
        wrong.is_err(),
        "a client pinned to another fingerprint must refuse the host"
    );
    // Plain HTTP is not served at all.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", th.api.port()))
        .send()
        .await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "the host API is HTTPS only"
    );
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_connects_costs_only_the_timeout() {
    let (db, th) = warm_host(1, &["--client-timeout-secs", "1"]).await;
    let (id, _token) = allocate(&db.pool, &th.host_id, "absent-user").await;
    assert_eq!(free_slots(&db.pool, &th.host_id).await, 0);
    eventually(
        "the abandoned session to be torn down",
        Duration::from_secs(20),
        || async { session_status(&db.pool, id).await.is_none() },
    )
    .await;
    assert!(!docker_status(&["inspect", &format!("berth-{id}")]).0);
    assert_eq!(
        free_slots(&db.pool, &th.host_id).await,
        1,
        "the slot is free again"
    );
    wait_warm(&db, &th, 1).await;
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_gets_ready_is_torn_down_with_a_clear_error() {
    let db = TestDb::new().await;
    add_runtime(
        &db,
        "never-ready",
        serde_json::json!({"APP_NEVER_READY": "1"}),
        1,
    )
    .await;
    let th = start_host(
        &db,
        HostArgs {
            capacity: 1,
            runtime: "never-ready",
            ..Default::default()
        },
    )
    .await;
    wait_warm(&db, &th, 1).await;
    let (id, token) = allocate(&db.pool, &th.host_id, "u").await;
    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "APP_NOT_READY");
    eventually(
        "teardown after the readiness timeout",
        Duration::from_secs(20),
        || async { session_status(&db.pool, id).await.is_none() },
    )
    .await;
    assert_eq!(free_slots(&db.pool, &th.host_id).await, 1);
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_warm_container_is_replaced_without_inventing_a_free_slot() {
    let (db, th) = warm_host(2, &[]).await;
    let (taken, _token) = allocate(&db.pool, &th.host_id, "user-1").await;
    assert_eq!(free_slots(&db.pool, &th.host_id).await, 1);
    let warm: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM sessions WHERE host_id = $1 AND status = 'WAITING'")
            .bind(&th.host_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();

    docker(&["kill", &format!("berth-{warm}")]);
    eventually(
        "the dead warm session to be replaced",
        Duration::from_secs(60),
        || async {
            let rows: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM sessions WHERE host_id = $1 AND status = 'WAITING'",
            )
            .bind(&th.host_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            rows.len() == 1 && rows[0] != warm
        },
    )
    .await;
    assert_eq!(
        free_slots(&db.pool, &th.host_id).await,
        1,
        "one slot is taken by user-1, so one is free: a dead warm container frees nothing"
    );
    assert!(session_status(&db.pool, taken).await.is_some());
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_token_revokes_the_old_one_before_the_app_runs() {
    let (db, th) = warm_host(1, &[]).await;
    let (id, old_token) = allocate(&db.pool, &th.host_id, "user-1").await;
    eventually("the host to claim it", Duration::from_secs(10), || async {
        session_status(&db.pool, id).await.as_deref() == Some("CONNECTING")
    })
    .await;
    // The scaler's re-issue when the client repeats its assign: a new token,
    // only its hash stored.
    let new_token = berth_common::auth::new_session_token();
    sqlx::query("UPDATE sessions SET token_sha256 = $2 WHERE id = $1")
        .bind(id)
        .bind(&new_token.sha256_hex)
        .execute(&db.pool)
        .await
        .unwrap();

    let status = |token: String| {
        let client = th.client();
        let url = th.url(&format!("/sessions/{id}"));
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        status(old_token.clone()).await,
        403,
        "the old token is dead"
    );
    assert_eq!(
        status(new_token.token.clone()).await,
        200,
        "the new one works"
    );
    let old = th.json_transport(&old_token, id, "{}").await;
    assert_eq!(old.status(), 403, "json_transport refuses the old token");
    let new = th.json_transport(&new_token.token, id, "{}").await;
    assert_eq!(new.status(), 200, "and accepts the new one");
    th.cleanup().await;
}
