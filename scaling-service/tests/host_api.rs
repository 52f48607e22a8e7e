//! The host API on the real control plane and PostgreSQL: a bootstrap token
//! registers its host once, a host credential acts only on its own host's row
//! and sessions and only along the state machine, and the watch stream
//! starts with a snapshot and then carries what the host must act on.

mod support;

use std::time::Duration;

use berth_common::auth::token_sha256_hex;
use reqwest::Method;
use scaling_service::host_api::identity::{issue_for_host, HandStartedHost};
use scaling_service::service;
use serde_json::{json, Value};
use support::*;

const IMAGE: &str = "ami-11111111";
const TYPE: &str = "t3.large";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.expect("the control plane answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn register(&self, token: &str, facts: Value) -> (u16, Value) {
        self.call(Method::POST, "/v1/host/register", Some(token), Some(facts))
            .await
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn facts(host: &str) -> Value {
    json!({
        "host_id": host, "region": REGION, "image_id": IMAGE, "instance_type": TYPE,
        "public_ip": "127.0.0.1", "private_ip": "127.0.0.1", "api_port": 4678,
        "cert_sha256": "a".repeat(64), "version": "test",
    })
}

fn hand_started(id: &str) -> HandStartedHost {
    HandStartedHost {
        id: berth_common::HostId::parse(id).unwrap(),
        region: REGION.into(),
        image_id: IMAGE.into(),
        instance_type: TYPE.into(),
        capacity: 2,
    }
}

async fn start(db: &TestDb) -> (service::Service, Api) {
    region(db, 0, 5, 2).await;
    // Real controllers run: keep them from draining these idle hosts as surplus.
    sqlx::query("UPDATE regions SET scale_down_grace_s = 3600")
        .execute(&db.pool)
        .await
        .unwrap();
    let svc = service::start_with_provider(config(db, &env_name(), &[]), aws().await)
        .await
        .unwrap();
    let api = Api {
        base: format!("http://{}", svc.addr),
        http: reqwest::Client::new(),
    };
    (svc, api)
}

async fn row_count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Registers `host` with a fresh token; its credential.
async fn registered(db: &TestDb, api: &Api, host: &str) -> String {
    let token = issue_for_host(&db.pool, &hand_started(host), 600)
        .await
        .unwrap();
    let (status, body) = api.register(&token, facts(host)).await;
    assert_eq!(status, 200, "{body}");
    body["credential"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_made_its_credential_survives_a_lost_registration_answer() {
    let db = TestDb::new().await;
    let (svc, api) = start(&db).await;
    let bootstrap = issue_for_host(&db.pool, &hand_started("h-c"), 600)
        .await
        .unwrap();
    let mine = berth_common::auth::new_session_token();
    let mut with_hash = facts("h-c");
    with_hash["credential_sha256"] = json!("NOT-A-HASH");
    let (status, _) = api.register(&bootstrap, with_hash.clone()).await;
    assert_eq!(status, 400, "a malformed hash is refused");

    // Spent with the host's own credential: none comes back, its hash is kept.
    with_hash["credential_sha256"] = json!(mine.sha256_hex);
    let (status, body) = api.register(&bootstrap, with_hash.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["credential"].is_null(), "nothing secret in the answer");
    let stored: Option<String> =
        sqlx::query_scalar("SELECT credential_sha256 FROM hosts WHERE id = 'h-c'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(mine.sha256_hex.as_str()));

    // That answer was lost: the spent token is refused, the credential the
    // host already holds registers it.
    let (status, body) = api.register(&bootstrap, with_hash).await;
    assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));
    let (status, body) = api.register(&mine.token, facts("h-c")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (200, json!("ACTIVE")),
        "{body}"
    );
    svc.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_token_registers_its_host_once_and_never_another() {
    let db = TestDb::new().await;
    let (svc, api) = start(&db).await;
    let token_a = issue_for_host(&db.pool, &hand_started("h-a"), 600)
        .await
        .unwrap();
    let token_b = issue_for_host(&db.pool, &hand_started("h-b"), 600)
        .await
        .unwrap();

    // Without a token, or with A's token for B: refused, nothing changed.
    let (status, body) = api
        .call(Method::POST, "/v1/host/register", None, Some(facts("h-a")))
        .await;
    assert_eq!((status, code(&body)), (401, "NOT_A_HOST"));
    let (status, body) = api.register(&token_a, facts("h-b")).await;
    assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));
    let (status, body) = api.register(&token_b, facts("h-unknown")).await;
    assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));
    assert_eq!(
        row_count(&db, "SELECT count(*) FROM hosts WHERE status = 'ACTIVE'").await,
        0
    );

    // A host that is not what its row says is refused.
    let mut wrong = facts("h-b");
    wrong["instance_type"] = json!("t3.xlarge");
    let (status, body) = api.register(&token_b, wrong).await;
    assert_eq!((status, code(&body)), (409, "HOST_MISMATCH"), "{body}");

    // A's token registers A once: a credential comes back, only its hash is kept.
    let (status, body) = api.register(&token_a, facts("h-a")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ACTIVE");
    assert_eq!(body["capacity"], 2);
    let credential = body["credential"].as_str().unwrap().to_owned();
    let stored: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT credential_sha256, bootstrap_sha256 FROM hosts WHERE id = 'h-a'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, (Some(token_sha256_hex(&credential)), None));

    // Used: refused. The credential re-registers (a restart), without a new one.
    let (status, body) = api.register(&token_a, facts("h-a")).await;
    assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));
    let (status, body) = api.register(&credential, facts("h-a")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["credential"].is_null());
    // A's credential is not B's.
    let (status, body) = api.register(&credential, facts("h-b")).await;
    assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));

    // An expired token is refused.
    sqlx::query("UPDATE hosts SET bootstrap_expires_at = now() - interval '1 s' WHERE id = 'h-b'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, body) = api.register(&token_b, facts("h-b")).await;
    assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));
    assert_eq!(
        row_count(
            &db,
            "SELECT count(*) FROM hosts WHERE id = 'h-b' AND status = 'PRE_CONNECTION'"
        )
        .await,
        1
    );
    svc.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_credential_reaches_only_its_own_host_and_sessions() {
    let db = TestDb::new().await;
    let (svc, api) = start(&db).await;
    let a = registered(&db, &api, "h-a").await;
    let b = registered(&db, &api, "h-b").await;
    let session = uuid::Uuid::new_v4().to_string();
    let warm = json!({"id": session, "runtime": "desktop", "container_id": "c-1", "tty": null, "ports": []});
    let (status, body) = api.post("/v1/host/sessions", &a, warm.clone()).await;
    assert_eq!(status, 200, "{body}");
    // Retried: the same answer, one row.
    let (status, _) = api.post("/v1/host/sessions", &a, warm.clone()).await;
    assert_eq!(status, 200);

    // B cannot take, read, claim, run, kill or delete A's session.
    let path = |tail: &str| format!("/v1/host/sessions/{session}{tail}");
    let (status, body) = api.post("/v1/host/sessions", &b, warm).await;
    assert_eq!((status, code(&body)), (409, "SESSION_ID_TAKEN"));
    let (status, body) = api.call(Method::GET, &path(""), Some(&b), None).await;
    assert_eq!((status, code(&body)), (404, "NO_SUCH_SESSION"));
    let (status, body) = api.post(&path("/claim"), &b, json!({})).await;
    assert_eq!((status, code(&body)), (409, "NOT_ALLOCATED"));
    let (status, body) = api.post(&path("/running"), &b, json!({})).await;
    assert_eq!((status, code(&body)), (404, "NO_SUCH_SESSION"));
    let (status, body) = api
        .post(
            &path("/dying"),
            &b,
            json!({"outcome": "ENDED", "reason": "b says so"}),
        )
        .await;
    assert_eq!((status, code(&body)), (404, "NO_SUCH_SESSION"));
    let (status, _) = api.call(Method::DELETE, &path(""), Some(&b), None).await;
    assert_eq!(status, 200, "deleting what is not yours is a no-op");
    let (status, body) = api
        .post("/v1/host/sessions/retire", &b, json!({"ids": [session]}))
        .await;
    assert_eq!((status, body["ids"].clone()), (200, json!([])));
    assert_eq!(
        row_count(
            &db,
            "SELECT count(*) FROM sessions WHERE host_id = 'h-a' AND status = 'WAITING'"
        )
        .await,
        1,
        "A's session is untouched"
    );

    // A host cannot move a session off the state machine: a warm session is
    // not claimed (nobody allocated it) nor RUNNING.
    let (status, body) = api.post(&path("/claim"), &a, json!({})).await;
    assert_eq!((status, code(&body)), (409, "NOT_ALLOCATED"));
    let (status, body) = api.post(&path("/running"), &a, json!({})).await;
    assert_eq!((status, code(&body)), (409, "NOT_CONNECTING"));

    // Nor allocate, nor touch runtimes, regions, images or the fleet views.
    for (method, path) in [
        (Method::POST, "/sessions"),
        (Method::GET, "/sessions"),
        (Method::GET, "/runtimes"),
        (Method::GET, "/regions"),
        (Method::GET, "/metrics"),
        (Method::GET, "/v1/operator/hosts"),
        (Method::POST, "/v1/operator/hosts/h-b/drain"),
        (Method::GET, "/ui/"),
    ] {
        let (status, body) = api
            .call(
                method.clone(),
                path,
                Some(&a),
                Some(json!({"runtime": "desktop", "regions": [REGION]})),
            )
            .await;
        assert!(
            status == 401 || status == 403,
            "{method} {path} with a host credential: {status} {body}"
        );
    }
    let (status, _) = api
        .post("/v1/host/runtimes/desktop", &a, json!({"image": "evil:1"}))
        .await;
    assert_eq!(status, 405);
    let (status, body) = api
        .call(Method::GET, "/v1/host/runtimes/desktop", Some(&a), None)
        .await;
    assert_eq!(
        (status, body["image"].clone()),
        (200, json!("berth-test-app:1"))
    );
    assert_eq!(
        row_count(
            &db,
            "SELECT count(*) FROM sessions WHERE status <> 'WAITING'"
        )
        .await,
        0
    );

    // A forged or absent credential is nobody.
    for token in [None, Some("not-a-credential")] {
        let (status, body) = api.call(Method::GET, "/v1/host/status", token, None).await;
        assert_eq!((status, code(&body)), (401, "NOT_A_HOST"));
    }

    // Heartbeats are written in a batch, soon.
    let (status, body) = api
        .post(
            "/v1/host/heartbeat",
            &a,
            json!({"load_average": 0.5, "session_count": 1}),
        )
        .await;
    assert_eq!((status, body["status"].clone()), (200, json!("ACTIVE")));
    eventually(
        "the heartbeat to be written",
        Duration::from_secs(5),
        || async {
            row_count(
                &db,
                "SELECT count(*) FROM hosts WHERE id = 'h-a' AND session_count = 1",
            )
            .await
                == 1
        },
    )
    .await;
    svc.stop().await;
    db.drop_database().await;
}

/// Reads server-sent events off a watch response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(api: &Api, credential: &str) -> Self {
        let response = api
            .http
            .get(format!("{}/v1/host/watch", api.base))
            .bearer_auth(credential)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (name, data), keep-alives skipped.
    async fn next(&mut self) -> (String, Value) {
        let read = async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    let mut name = String::new();
                    let mut data = String::new();
                    for line in frame.lines() {
                        if let Some(v) = line.strip_prefix("event: ") {
                            name = v.to_owned();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data.push_str(v);
                        }
                    }
                    if !name.is_empty() {
                        return (name, serde_json::from_str(&data).unwrap());
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .unwrap()
                    .expect("the stream stays open");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an event within 10 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_starts_with_a_snapshot_and_pushes_allocations_tokens_and_drains() {
    let db = TestDb::new().await;
    let (svc, api) = start(&db).await;
    let a = registered(&db, &api, "h-a").await;
    let session = uuid::Uuid::new_v4().to_string();
    let warm = json!({"id": session, "runtime": "desktop", "container_id": "c-1", "tty": null, "ports": []});
    let (status, _) = api.post("/v1/host/sessions", &a, warm).await;
    assert_eq!(status, 200);

    let mut events = Events::open(&api, &a).await;
    let (name, snapshot) = events.next().await;
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["host"]["status"], "ACTIVE");
    assert_eq!(snapshot["sessions"][0]["id"], json!(session));
    assert_eq!(snapshot["sessions"][0]["status"], "WAITING");

    // A user's assign reaches the host with the owner's token hash.
    sqlx::query("UPDATE hosts SET client_sha = 'sha-1'")
        .execute(&db.pool)
        .await
        .unwrap();
    let alice = jwt("alice", AUDIENCE, 300);
    let assign = json!({"runtime": "desktop", "regions": [REGION], "client_commit": "sha-1", "client_session_id": "c-1"});
    let (status, assigned) = api.post("/sessions", &alice, assign.clone()).await;
    assert_eq!(status, 201, "{assigned}");
    let token = assigned["token"].as_str().unwrap().to_owned();
    let (name, event) = events.next().await;
    assert_eq!(name, "session");
    assert_eq!(event["id"], json!(session));
    assert_eq!(event["status"], "ALLOCATED");
    assert_eq!(event["user_id"], "alice");
    assert_eq!(event["token_sha256"], json!(token_sha256_hex(&token)));
    // This replica holds the stream, so it told the host directly or through
    // its NOTIFY, whichever came first, and only once: the next event is the
    // re-issued token, not the same allocation again.
    assert!(svc.scaler.metrics.direct_host_events.get() <= 1);

    // The host claims it, then the client repeats its assign: the new token's
    // hash follows at once.
    let claim = json!({"token_sha256": token_sha256_hex(&token)});
    let (status, body) = api
        .post(&format!("/v1/host/sessions/{session}/claim"), &a, claim)
        .await;
    assert_eq!((status, body["status"].clone()), (200, json!("CONNECTING")));
    let (status, again) = api.post("/sessions", &alice, assign).await;
    assert_eq!(status, 200, "{again}");
    let reissued = again["token"].as_str().unwrap();
    let (name, event) = events.next().await;
    assert_eq!(name, "session");
    assert_eq!(event["status"], "CONNECTING");
    assert_eq!(event["token_sha256"], json!(token_sha256_hex(reissued)));
    // Both hints went through the database's outbox, published by this
    // replica (its counter moves just after the NOTIFY is sent).
    let published = tokio::time::timeout(Duration::from_secs(5), async {
        while svc.scaler.metrics.hints_published.get() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        published.is_ok(),
        "hints published: {}",
        svc.scaler.metrics.hints_published.get()
    );

    // RUNNING, retried; then a drain arrives as a host event.
    for _ in 0..2 {
        let (status, body) = api
            .post(
                &format!("/v1/host/sessions/{session}/running"),
                &a,
                json!({}),
            )
            .await;
        assert_eq!((status, body["status"].clone()), (200, json!("RUNNING")));
    }
    let (status, body) = api
        .post("/v1/host/drain", &a, json!({"reason": "test"}))
        .await;
    assert_eq!((status, body["moved"].clone()), (200, json!(true)));
    let (name, event) = events.next().await;
    assert_eq!(
        (name.as_str(), event["status"].clone()),
        ("host", json!("DRAINING"))
    );

    // The owner's delete reaches the host as the session's end.
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/sessions/{session}"),
            Some(&alice),
            None,
        )
        .await;
    assert!(status == 200 || status == 202 || status == 204, "{status}");
    let (name, event) = events.next().await;
    assert_eq!(name, "session");
    assert_eq!(event["status"], "DYING");
    svc.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_hands_its_instances_a_token_that_registers_each_once() {
    let db = TestDb::new().await;
    region(&db, 4, 5, 2).await;
    let dir = tempfile_dir();
    let user_data = dir.join("user-data.sh");
    std::fs::write(&user_data, "BERTH_HOST_TOKEN='{bootstrap_token}'\n").unwrap();
    let recording = std::sync::Arc::new(FaultyProvider::new(aws().await, 0, 0));
    let env = env_name();
    let svc = service::start_with_provider(
        config(
            &db,
            &env,
            &["--user-data-file", user_data.to_str().unwrap()],
        ),
        recording.clone(),
    )
    .await
    .unwrap();
    let api = Api {
        base: format!("http://{}", svc.addr),
        http: reqwest::Client::new(),
    };
    eventually(
        "the launch to be recorded",
        Duration::from_secs(20),
        || async {
            row_count(
                &db,
                "SELECT count(*) FROM hosts WHERE status = 'PRE_CONNECTION'",
            )
            .await
                == 2
        },
    )
    .await;
    let launch = recording.launches.lock().unwrap()[0].clone();
    let (user_data, token) = (launch.user_data, launch.bootstrap_token.0);
    assert_eq!(
        user_data.as_deref(),
        Some(format!("BERTH_HOST_TOKEN='{token}'\n").as_str())
    );
    // Only the hash is stored.
    assert_eq!(
        row_count(
            &db,
            &format!(
                "SELECT count(*) FROM launches WHERE bootstrap_sha256 = '{}'",
                token_sha256_hex(&token)
            )
        )
        .await,
        1
    );
    let hosts: Vec<(String, String)> =
        sqlx::query_as("SELECT id, instance_type FROM hosts ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut credentials = vec![];
    for (id, instance_type) in &hosts {
        let mut me = facts(id);
        me["instance_type"] = json!(instance_type);
        let (status, body) = api.register(&token, me.clone()).await;
        assert_eq!(status, 200, "{body}");
        credentials.push(body["credential"].as_str().unwrap().to_owned());
        // Spent for this host.
        let (status, body) = api.register(&token, me).await;
        assert_eq!((status, code(&body)), (403, "REGISTRATION_REFUSED"));
    }
    assert_ne!(
        credentials[0], credentials[1],
        "each host its own credential"
    );
    svc.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_database().await;
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("berth-host-api-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `GET /v1/host/status` with `credential`: whether it was refused
/// within `bound`.
async fn refused_within(api: &Api, credential: &str, bound: Duration) -> bool {
    let began = std::time::Instant::now();
    while began.elapsed() < bound {
        let (status, body) = api
            .call(Method::GET, "/v1/host/status", Some(credential), None)
            .await;
        if status == 401 {
            assert_eq!(code(&body), "NOT_A_HOST");
            return true;
        }
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_at_once_though_the_replica_remembered_it() {
    let db = TestDb::new().await;
    let (svc, api) = start(&db).await;
    let a = registered(&db, &api, "h-a").await;
    let b = registered(&db, &api, "h-b").await;
    // Used twice: the second call is answered from what the replica remembers.
    for _ in 0..2 {
        let (status, body) = api
            .call(Method::GET, "/v1/host/status", Some(&a), None)
            .await;
        assert_eq!((status, body["status"].clone()), (200, json!("ACTIVE")));
    }
    let (status, _) = api
        .call(Method::GET, "/v1/host/status", Some(&b), None)
        .await;
    assert_eq!(status, 200);

    // An operator issues a new bootstrap token for A (the `host-token` command,
    // another process): A's credential is void, well before the replica
    // would have re-checked it on its own (30 s).
    let token = issue_for_host(&db.pool, &hand_started("h-a"), 600)
        .await
        .unwrap();
    assert!(
        refused_within(&api, &a, Duration::from_secs(5)).await,
        "A's old credential still worked 5 s after its revocation"
    );
    let (status, body) = api.register(&token, facts("h-a")).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["credential"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call(Method::GET, "/v1/host/status", Some(&renewed), None)
        .await;
    assert_eq!(status, 200, "the new credential works");
    let (status, _) = api
        .call(Method::GET, "/v1/host/status", Some(&a), None)
        .await;
    assert_eq!(status, 401, "the old one stays refused");

    // B's row goes: its remembered credential goes with it.
    sqlx::query("DELETE FROM hosts WHERE id = 'h-b'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(
        refused_within(&api, &b, Duration::from_secs(5)).await,
        "a deleted host's credential still worked after 5 s"
    );
    svc.stop().await;
    db.drop_database().await;
}
