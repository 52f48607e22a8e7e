//! What a session's app knows about itself and when it will end, on the real
//! parts (Docker, the control plane, PostgreSQL): `/berth/session.json` as the
//! app reads it inside its container, lifetimes announced ahead in
//! `/berth/warning.json` and to the client, and idle ends a session's use
//! cancels.

#[path = "host_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use uuid::Uuid;

/// A runtime like a desktop (a TTY) with the helper app's ports, and these
/// end settings.
async fn host_with_ends(
    idle_timeout_s: Option<i32>,
    max_lifetime_s: Option<i32>,
    idle_warning_s: Option<i32>,
) -> (TestDb, TestHost) {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO runtimes (name, image, ports, memory_mib, readiness, ready_timeout_s, needs_tty, \
                               idle_timeout_s, max_lifetime_s, idle_warning_s) \
         VALUES ('ends', $1, '[{\"container_port\": 8080, \"protocol\": \"tcp\"}, \
                             {\"container_port\": 8081, \"protocol\": \"tcp\", \"exposure\": \"proxy\"}]', \
                 64, '{\"http\": {\"port\": 8080, \"path\": \"/ready\"}}', 10, true, $2, $3, $4)",
    )
    .bind(test_image())
    .bind(idle_timeout_s)
    .bind(max_lifetime_s)
    .bind(idle_warning_s)
    .execute(&db.pool)
    .await
    .expect("inserting the runtime");
    let th = start_host(
        &db,
        HostArgs {
            capacity: 2,
            runtime: "ends",
            ..Default::default()
        },
    )
    .await;
    wait_warm(&db, &th, 2).await;
    (db, th)
}

async fn finished(db: &TestDb, th: &TestHost, user: &str) -> (Uuid, String) {
    let (id, token) = allocate(&db.pool, &th.host_id, user).await;
    let response = th.json_transport(&token, id, "{\"user\": \"x\"}").await;
    assert_eq!(response.status(), 200, "json_transport for {user}");
    (id, token)
}

/// A file as the session's app reads it.
fn read_in_container(id: Uuid, path: &str) -> String {
    docker(&["exec", &format!("berth-{id}"), "cat", path])
}

fn warning_in_container(id: Uuid) -> Value {
    serde_json::from_str(&read_in_container(id, "/berth/warning.json")).unwrap()
}

async fn on_host(th: &TestHost, id: Uuid, token: &str) -> Value {
    th.client()
        .get(th.url(&format!("/sessions/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The session as its owner sees it on the scheduler (user JWT).
async fn on_scheduler(db: &TestDb, id: Uuid, user: &str) -> Value {
    let token = berth_tests::client::dev_user_token(
        USER_SECRET,
        user,
        None,
        None,
        Duration::from_secs(600),
    );
    reqwest::Client::new()
        .get(format!("{}/sessions/{id}", db.control_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reads_its_own_facts_and_cannot_change_them() {
    let (db, th) = host_with_ends(Some(600), Some(3600), Some(30)).await;
    let finishing = chrono::Utc::now();
    let (id, _) = finished(&db, &th, "fay").await;
    let facts: Value = serde_json::from_str(&read_in_container(id, "/berth/session.json")).unwrap();

    // Field by field against the session's row and its container's labels.
    let (user_id, host_id, runtime): (String, String, String) =
        sqlx::query_as("SELECT user_id, host_id, runtime FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let label = |name: &str| {
        docker(&[
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{name}\"}}}}"),
            &format!("berth-{id}"),
        ])
        .trim()
        .to_owned()
    };
    assert_eq!(facts["session_id"], id.to_string());
    assert_eq!(facts["user_id"], user_id);
    assert_eq!(facts["host_id"], host_id);
    assert_eq!(facts["host_id"], label("berth.host"));
    assert_eq!(facts["runtime"], runtime);
    assert_eq!(facts["runtime"], label("berth.runtime"));
    assert_eq!(facts["region"], "local");
    assert_eq!(
        facts["ports"],
        serde_json::from_str::<Value>(&label("berth.ports")).unwrap()
    );
    assert_eq!(facts["tty"].to_string(), label("berth.tty"));
    assert_eq!(
        facts["devices"],
        serde_json::from_str::<Value>(&label("berth.uinput")).unwrap()
    );
    assert_eq!(
        facts["gpus"],
        serde_json::json!([]),
        "no GPUs on this runtime"
    );
    assert_eq!(
        facts["deadlines"]["idle_timeout_s"], 600,
        "deadlines: {facts}"
    );
    assert_eq!(facts["deadlines"]["idle_warning_s"], 30);
    assert_eq!(facts["deadlines"]["max_lifetime_s"], 3600);
    let ends: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(facts["deadlines"]["lifetime_ends_at"].clone()).unwrap();
    let from_finish = (ends - finishing).num_seconds();
    assert!(
        (3599..=3601).contains(&from_finish),
        "the lifetime counts from the finish: {from_finish} s"
    );
    assert_eq!(
        warning_in_container(id),
        Value::Null,
        "no end announced yet"
    );

    // Read-only to the app, whatever it tries.
    for attempt in [
        "echo forged > /berth/session.json",
        "rm /berth/session.json",
        "mv /berth/warning.json /berth/x",
    ] {
        let (ok, _) = docker_status(&["exec", &format!("berth-{id}"), "sh", "-c", attempt]);
        assert!(!ok, "the app could {attempt:?}");
    }
    let again: Value = serde_json::from_str(&read_in_container(id, "/berth/session.json")).unwrap();
    assert_eq!(again, facts);
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_is_announced_to_app_and_client_then_ends_the_session_as_lifetime() {
    let (db, th) = host_with_ends(None, Some(4), Some(2)).await;
    let started = Instant::now();
    let (id, token) = finished(&db, &th, "gil").await;
    assert_eq!(warning_in_container(id), Value::Null);

    eventually(
        "the app to see the lifetime's end coming",
        Duration::from_secs(10),
        || async { warning_in_container(id)["reason"] == "LIFETIME" },
    )
    .await;
    let warned_after = started.elapsed();
    assert!(
        warned_after >= Duration::from_millis(1500),
        "warned about 2 s ahead of the 4 s lifetime, not at {warned_after:?}"
    );
    let here = on_host(&th, id, &token).await;
    assert_eq!(here["end_reason"], "LIFETIME", "{here}");
    assert_eq!(here["ends_at"], warning_in_container(id)["ends_at"]);
    eventually(
        "the scheduler to show the coming end",
        Duration::from_secs(5),
        || async { !on_scheduler(&db, id, "gil").await["ends_at"].is_null() },
    )
    .await;
    let there = on_scheduler(&db, id, "gil").await;
    assert!(
        there["end_warning"]
            .as_str()
            .is_some_and(|w| w.starts_with("LIFETIME")),
        "{there}"
    );
    assert_eq!(there["status"], "RUNNING", "warned, not yet ended");

    eventually(
        "the lifetime to end the session",
        Duration::from_secs(15),
        || async { session_status(&db.pool, id).await.is_none() },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "ended at its lifetime, not before: {:?}",
        started.elapsed()
    );
    let (outcome, reason): (String, String) =
        sqlx::query_as("SELECT outcome::text, reason FROM session_history WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "LIFETIME", "{reason}");
    assert!(reason.contains("maximum lifetime of 4s"), "{reason}");
    let ended = on_scheduler(&db, id, "gil").await;
    assert_eq!(ended["status"], "LIFETIME", "the user is told why: {ended}");
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_warned_and_then_used_lives_on() {
    let (db, th) = host_with_ends(Some(4), None, Some(2)).await;
    let started = Instant::now();
    let (id, token) = finished(&db, &th, "hal").await;
    eventually(
        "the idle end to be announced",
        Duration::from_secs(10),
        || async { warning_in_container(id)["reason"] == "IDLE" },
    )
    .await;
    assert_eq!(on_host(&th, id, &token).await["end_reason"], "IDLE");

    // The user comes back: the owner's activity ping, as a client sends it.
    let touched = th
        .client()
        .post(th.url(&format!("/sessions/{id}/activity")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(touched.status().is_success());
    eventually(
        "the warning to be withdrawn",
        Duration::from_secs(5),
        || async { warning_in_container(id).is_null() },
    )
    .await;
    assert!(on_host(&th, id, &token).await.get("ends_at").is_none());
    eventually(
        "the scheduler to drop the warning",
        Duration::from_secs(5),
        || async { on_scheduler(&db, id, "hal").await["ends_at"].is_null() },
    )
    .await;
    // Past the first idle deadline it still runs.
    eventually(
        "the first idle deadline to pass",
        Duration::from_secs(10),
        || async { started.elapsed() >= Duration::from_secs(5) },
    )
    .await;
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("RUNNING")
    );
    th.cleanup().await;
}
