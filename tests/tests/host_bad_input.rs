//! json_transport refuses bad input with the right status and changes
//! nothing on disk or in the database.

#[path = "host_support/mod.rs"]
mod support;

use std::time::Duration;

use support::*;
use uuid::Uuid;

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: Vec<(Uuid, String, Option<String>)>,
    free_slots: i32,
    files: Vec<String>,
}

async fn snapshot(db: &TestDb, th: &TestHost) -> Snapshot {
    let rows = sqlx::query_as(
        "SELECT id, status::text, status_reason FROM sessions WHERE host_id = $1 ORDER BY id",
    )
    .bind(&th.host_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut files = vec![];
    for entry in walk(&th.state_dir.join("sessions")) {
        files.push(entry);
    }
    files.sort();
    Snapshot {
        rows,
        free_slots: free_slots(&db.pool, &th.host_id).await,
        files,
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_and_changes_nothing() {
    let (db, th) = warm_host(3, &["--max-body-bytes", "4096"]).await;
    let (id, token) = allocate(&db.pool, &th.host_id, "owner").await;
    let (other_id, other_token) = allocate(&db.pool, &th.host_id, "someone-else").await;
    for s in [id, other_id] {
        eventually("claimed", Duration::from_secs(10), || async {
            session_status(&db.pool, s).await.as_deref() == Some("CONNECTING")
        })
        .await;
    }
    let before = snapshot(&db, &th).await;
    let client = th.client();
    let url = th.url("/json_transport");
    let good = json_transport_body(id, "{\"a\": 1}");

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "no token",
            client.put(&url).json(&good),
            401,
            "UNAUTHORIZED",
        ),
        (
            "not a bearer token",
            client
                .put(&url)
                .header("authorization", format!("Basic {token}"))
                .json(&good),
            401,
            "UNAUTHORIZED",
        ),
        (
            "wrong token",
            client.put(&url).bearer_auth("not-the-token").json(&good),
            403,
            "FORBIDDEN",
        ),
        (
            "another session's token",
            client.put(&url).bearer_auth(&other_token).json(&good),
            403,
            "FORBIDDEN",
        ),
        (
            "unknown session",
            client
                .put(&url)
                .bearer_auth(&token)
                .json(&json_transport_body(Uuid::new_v4(), "{}")),
            403,
            "FORBIDDEN",
        ),
        (
            "body over the limit",
            client
                .put(&url)
                .bearer_auth(&token)
                .json(&json_transport_body(
                    id,
                    &format!("{{\"x\": \"{}\"}}", "a".repeat(8192)),
                )),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            "malformed JSON",
            client
                .put(&url)
                .bearer_auth(&token)
                .body("{\"session_id\": "),
            400,
            "BAD_REQUEST",
        ),
        (
            "json_data not JSON",
            client
                .put(&url)
                .bearer_auth(&token)
                .json(&json_transport_body(id, "{not json")),
            400,
            "BAD_REQUEST",
        ),
        (
            "json_data not an object",
            client
                .put(&url)
                .bearer_auth(&token)
                .json(&json_transport_body(id, "[1, 2]")),
            400,
            "BAD_REQUEST",
        ),
        (
            "session id that tries to escape",
            client
                .put(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({"session_id": "../../etc", "json_data": "{}"})),
            400,
            "BAD_REQUEST",
        ),
        (
            "missing fields",
            client
                .put(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({"session_id": id})),
            400,
            "BAD_REQUEST",
        ),
        (
            "wrong method",
            client.post(&url).bearer_auth(&token).json(&good),
            405,
            "METHOD_NOT_ALLOWED",
        ),
    ];
    for (what, request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: a message says why"
        );
    }
    // Other session APIs refuse strangers too.
    let status = client
        .get(th.url(&format!("/sessions/{id}")))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 403);
    let delete = client
        .delete(th.url(&format!("/sessions/{id}")))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);
    let delete = client
        .delete(th.url(&format!("/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 401);

    assert_eq!(
        snapshot(&db, &th).await,
        before,
        "refused requests changed nothing"
    );
    assert!(!th
        .state_dir
        .join("sessions")
        .join(id.to_string())
        .join("config.json")
        .exists());

    // The real one works, once.
    let ok = client
        .put(&url)
        .bearer_auth(&token)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let config = th
        .state_dir
        .join("sessions")
        .join(id.to_string())
        .join("config.json");
    assert_eq!(std::fs::read(&config).unwrap(), b"{\"a\": 1}");
    let after_first = snapshot(&db, &th).await;
    let again = client
        .put(&url)
        .bearer_auth(&token)
        .json(&json_transport_body(id, "{\"b\": 2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "a second json_transport is refused");
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ALREADY_CONFIGURED");
    assert_eq!(
        std::fs::read(&config).unwrap(),
        b"{\"a\": 1}",
        "the first config stays"
    );
    assert_eq!(snapshot(&db, &th).await, after_first);
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_faster_than_the_allocation_hint_is_served() {
    let (db, th) = warm_host(1, &[]).await;
    let (id, token) = allocate(&db.pool, &th.host_id, "quick").await;
    // No wait for CONNECTING: json_transport claims the session itself.
    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("RUNNING")
    );
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_answered_405_with_the_allowed_ones() {
    let (db, th) = warm_host(1, &[]).await;
    let client = th.client();
    let id = Uuid::new_v4();
    let cases = [
        (reqwest::Method::POST, "/json_transport".to_owned(), "PUT"),
        (
            reqwest::Method::PUT,
            format!("/sessions/{id}"),
            "GET, DELETE",
        ),
        (
            reqwest::Method::GET,
            format!("/sessions/{id}/activity"),
            "POST",
        ),
        (
            reqwest::Method::DELETE,
            format!("/sessions/{id}/login"),
            "GET, POST",
        ),
        (reqwest::Method::POST, "/healthz".to_owned(), "GET"),
        (reqwest::Method::DELETE, "/metrics".to_owned(), "GET"),
    ];
    for (method, path, allow) in cases {
        let response = client
            .request(method.clone(), th.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "METHOD_NOT_ALLOWED",
            "{method} {path}"
        );
    }
    th.cleanup().await;
    db.drop_database().await;
}
