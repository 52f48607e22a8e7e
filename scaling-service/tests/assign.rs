//! Assign on real PostgreSQL: atomic under heavy concurrency, typed errors
//! for every bad request, idempotent per (user, client_session_id).

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use scaling_service::assign::{assign, AssignError, AssignRequest};
use scaling_service::service;
use serde_json::{json, Value};
use support::*;

fn request(csid: Option<&str>) -> AssignRequest {
    AssignRequest {
        runtime: "desktop".into(),
        regions: vec![REGION.into()],
        client_commit: "sha-1".into(),
        client_session_id: csid.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_assigns_over_fifty_hosts_never_double_allocate() {
    let db = TestDb::new().await;
    warm_hosts(&db, 50, 4).await;
    let pool = db.pool.clone();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(
                async move { assign(&pool, &format!("user-{i}"), &request(Some("c"))).await },
            )
        })
        .collect();
    let (mut won, mut no_capacity, mut other) = (vec![], 0, vec![]);
    for task in tasks {
        match task.await.unwrap() {
            Ok(a) => won.push(a),
            Err(AssignError::NoCapacity) => no_capacity += 1,
            Err(e) => other.push(e.to_string()),
        }
    }
    assert!(
        other.is_empty(),
        "only capacity may refuse: {:?}",
        &other[..other.len().min(3)]
    );
    assert_eq!(won.len(), 200, "every slot is handed out");
    assert_eq!(no_capacity, 800);
    let ids: HashSet<_> = won.iter().map(|a| a.session_id).collect();
    assert_eq!(ids.len(), 200, "no session was given twice");
    let (allocated, users, min_free, waiting): (i64, i64, i32, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sessions WHERE status = 'ALLOCATED'), \
                (SELECT count(DISTINCT user_id) FROM sessions WHERE status = 'ALLOCATED'), \
                (SELECT min(free_slots) FROM hosts), \
                (SELECT count(*) FROM sessions WHERE status = 'WAITING')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((allocated, users, min_free, waiting), (200, 200, 0, 0));
    // Each host's free slots equal its capacity minus its allocated sessions.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM hosts h WHERE h.free_slots <> h.capacity - \
           (SELECT count(*) FROM sessions s WHERE s.host_id = h.id AND s.status <> 'WAITING')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_fills_the_fullest_host_first_and_respects_region_order() {
    let db = TestDb::new().await;
    warm_hosts(&db, 2, 4).await;
    // i-00000002 is fuller (one slot taken already).
    let first = assign(&db.pool, "u0", &request(None)).await.unwrap();
    let second = assign(&db.pool, "u1", &request(None)).await.unwrap();
    assert_eq!(
        first.host.id, second.host.id,
        "bin-packing: the same (now fuller) host again"
    );
    db.drop_database().await;
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_typed_error_and_the_api_behaves() {
    let db = TestDb::new().await;
    warm_hosts(&db, 1, 3).await;
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    let url = |p: &str| format!("{base}{p}");
    let http = reqwest::Client::new();
    let alice = jwt("alice", AUDIENCE, 300);
    let good = json!({"runtime": "desktop", "regions": [REGION], "client_commit": "sha-1", "client_session_id": "a-1"});
    let post = reqwest::Method::POST;

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = chrono::Utc::now().timestamp() + 300;
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "exp": exp}))
    );
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-that-is-32-bytes-long!"),
    )
    .unwrap();
    let refused: Vec<(&str, Option<String>, Value, u16, &str)> = vec![
        ("no token", None, good.clone(), 401, "UNAUTHORIZED"),
        (
            "expired token",
            Some(jwt("alice", AUDIENCE, -3600)),
            good.clone(),
            401,
            "UNAUTHORIZED",
        ),
        (
            "wrong audience",
            Some(jwt("alice", "someone-else", 300)),
            good.clone(),
            401,
            "UNAUTHORIZED",
        ),
        (
            "alg none",
            Some(alg_none),
            good.clone(),
            401,
            "UNAUTHORIZED",
        ),
        (
            "forged signature",
            Some(forged),
            good.clone(),
            401,
            "UNAUTHORIZED",
        ),
        (
            "malformed body",
            Some(alice.clone()),
            json!({"runtime": 7}),
            400,
            "BAD_REQUEST",
        ),
        (
            "unknown field",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": [REGION], "gpu": true}),
            400,
            "BAD_REQUEST",
        ),
        (
            "no regions",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": []}),
            400,
            "BAD_REQUEST",
        ),
        (
            "unknown region",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": ["mars-1"]}),
            400,
            "REGION_NOT_ENABLED",
        ),
        (
            "unknown runtime",
            Some(alice.clone()),
            json!({"runtime": "nope", "regions": [REGION]}),
            400,
            "UNKNOWN_RUNTIME",
        ),
        (
            "old client",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": [REGION], "client_commit": "sha-0"}),
            409,
            "COMMIT_MISMATCH",
        ),
        // PostgreSQL cannot store NUL: each must be the client's 400, not a 500.
        (
            "NUL in runtime",
            Some(alice.clone()),
            json!({"runtime": "desk\u{0}top", "regions": [REGION]}),
            400,
            "BAD_REQUEST",
        ),
        (
            "NUL in a region",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": ["us-\u{0}east-1"]}),
            400,
            "BAD_REQUEST",
        ),
        (
            "NUL in client_commit",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": [REGION], "client_commit": "sha\u{0}"}),
            400,
            "BAD_REQUEST",
        ),
        (
            "NUL in client_session_id",
            Some(alice.clone()),
            json!({"runtime": "desktop", "regions": [REGION], "client_session_id": "a\u{0}b"}),
            400,
            "BAD_REQUEST",
        ),
        (
            "NUL in the token's sub",
            Some(jwt("ali\u{0}ce", AUDIENCE, 300)),
            good.clone(),
            401,
            "UNAUTHORIZED",
        ),
    ];
    for (what, token, body, status, expected) in refused {
        let (got, body) = call(
            &http,
            post.clone(),
            &url("/sessions"),
            token.as_deref(),
            Some(body),
        )
        .await;
        assert_eq!((got, code(&body)), (status, expected), "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("invalid byte sequence")
                && !message.contains("error returned from database"),
            "{what}: the database's words reached the client: {message}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: says why"
        );
    }
    let huge = json!({"runtime": "desktop", "regions": [REGION], "client_session_id": "x".repeat(100_000)});
    let (got, body) = call(
        &http,
        post.clone(),
        &url("/sessions"),
        Some(&alice),
        Some(huge),
    )
    .await;
    assert_eq!((got, code(&body)), (413, "PAYLOAD_TOO_LARGE"));
    let untouched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE status <> 'WAITING'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(untouched, 0, "refused requests allocated nothing");

    // A real assign, then the same request again: same session, fresh token.
    let (got, first) = call(
        &http,
        post.clone(),
        &url("/sessions"),
        Some(&alice),
        Some(good.clone()),
    )
    .await;
    assert_eq!(got, 201, "{first}");
    assert_eq!(first["status"], "ALLOCATED");
    assert_eq!(first["host"]["ip"], "127.0.0.1");
    assert_eq!(first["host"]["api_port"], 4678);
    assert_eq!(first["host"]["cert_sha256"], "a".repeat(64));
    let token = first["token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    let stored: String =
        sqlx::query_scalar("SELECT token_sha256 FROM sessions WHERE id = $1::uuid")
            .bind(first["session_id"].as_str().unwrap())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        berth_common::auth::token_sha256_hex(token),
        "only the token's hash is stored"
    );
    let (got, again) = call(
        &http,
        post.clone(),
        &url("/sessions"),
        Some(&alice),
        Some(good.clone()),
    )
    .await;
    assert_eq!(got, 200);
    assert_eq!(
        again["session_id"], first["session_id"],
        "idempotent per client_session_id"
    );
    let free: i32 = sqlx::query_scalar("SELECT free_slots FROM hosts")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(free, 2, "the repeat took no second slot");

    // Whist-compatible route.
    let whist = json!({"regions": [REGION], "client_commit_hash": "sha-1", "session_id": 1234, "user_email": "a@b.c"});
    let (got, body) = call(
        &http,
        post.clone(),
        &url("/mandelbox/assign"),
        Some(&alice),
        Some(whist),
    )
    .await;
    assert_eq!(got, 201, "{body}");
    assert_eq!(body["mandelbox_id"], body["session_id"]);

    // The limit: alice may have 2.
    sqlx::query("INSERT INTO limits (user_id, max_sessions) VALUES ('alice', 2)")
        .execute(&db.pool)
        .await
        .unwrap();
    let third = json!({"runtime": "desktop", "regions": [REGION], "client_session_id": "a-3"});
    let (got, body) = call(
        &http,
        post.clone(),
        &url("/sessions"),
        Some(&alice),
        Some(third),
    )
    .await;
    assert_eq!((got, code(&body)), (429, "USER_LIMIT"));
    // Bob gets the last slot, Carol none.
    let bob = jwt("bob", AUDIENCE, 300);
    let (got, _) = call(
        &http,
        post.clone(),
        &url("/sessions"),
        Some(&bob),
        Some(json!({"runtime": "desktop", "regions": [REGION]})),
    )
    .await;
    assert_eq!(got, 201);
    let carol = jwt("carol", AUDIENCE, 300);
    let (got, body) = call(
        &http,
        post.clone(),
        &url("/sessions"),
        Some(&carol),
        Some(json!({"runtime": "desktop", "regions": [REGION]})),
    )
    .await;
    assert_eq!((got, code(&body)), (503, "NO_CAPACITY"));

    // Sessions are their owner's only.
    let sid = first["session_id"].as_str().unwrap();
    let (got, body) = call(
        &http,
        reqwest::Method::GET,
        &url(&format!("/sessions/{sid}")),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(got, 200);
    assert_eq!(body["status"], "ALLOCATED");
    let (got, _) = call(
        &http,
        reqwest::Method::GET,
        &url(&format!("/sessions/{sid}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(got, 404, "another user's session is not even visible");
    let (got, _) = call(
        &http,
        reqwest::Method::DELETE,
        &url(&format!("/sessions/{sid}")),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(got, 404);
    let (got, list) = call(
        &http,
        reqwest::Method::GET,
        &url("/sessions"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((got, list["sessions"].as_array().unwrap().len()), (200, 2));
    let (got, _) = call(
        &http,
        reqwest::Method::DELETE,
        &url(&format!("/sessions/{sid}")),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(got, 202);
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM sessions WHERE id = $1::uuid")
            .bind(sid)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "DYING", "the host is told to tear it down");

    let (got, body) = call(
        &http,
        reqwest::Method::GET,
        &url("/runtimes"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(
        (got, body["runtimes"][0]["name"].as_str()),
        (200, Some("desktop"))
    );
    // Operator surfaces: none is refused (401), a user's token is forbidden
    // (403), the operator's works.
    for (path, token, status) in [
        ("/regions", Some(alice.as_str()), 403),
        ("/metrics", None, 401),
        ("/metrics", Some(alice.as_str()), 403),
    ] {
        let (got, body) = call(&http, reqwest::Method::GET, &url(path), token, None).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some("OPERATOR_ONLY")),
            "{path}"
        );
    }
    let operator = berth_testing::OPERATOR_TOKEN.to_owned();
    let (got, body) = call(
        &http,
        reqwest::Method::GET,
        &url("/regions"),
        Some(operator.as_str()),
        None,
    )
    .await;
    assert_eq!(
        (got, body["regions"][0]["name"].as_str()),
        (200, Some(REGION))
    );
    let metrics = http
        .get(url("/metrics"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("berth_scaler_assigns_total"), "{metrics}");
    let _ = Arc::clone(&svc.scaler);
    svc.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_runtime_goes_only_to_hosts_with_enough_gpus() {
    let db = TestDb::new().await;
    warm_hosts(&db, 2, 4).await;
    // Both hosts keep warm sessions of a runtime wanting 2 GPUs; only the
    // second has 2 (the first, with 1, would win the tie on id otherwise).
    sqlx::query(
        "INSERT INTO runtimes (name, image, gpus) VALUES ('cuda', 'berth-test-app:1', '2')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE hosts SET gpus = CASE id WHEN 'i-00000002' THEN 2 ELSE 1 END")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO sessions (id, host_id, runtime) SELECT gen_random_uuid(), h.id, 'cuda' FROM hosts h, generate_series(1, 2)")
        .execute(&db.pool)
        .await
        .unwrap();
    let cuda = |user: &str| {
        let user = user.to_owned();
        let db = db.pool.clone();
        async move {
            let request = AssignRequest {
                runtime: "cuda".into(),
                ..request(None)
            };
            assign(&db, &user, &request).await
        }
    };
    for user in ["g0", "g1"] {
        let assigned = cuda(user).await.unwrap();
        assert_eq!(assigned.host.id, "i-00000002", "only the host with 2 GPUs");
    }
    match cuda("g2").await {
        Err(e @ AssignError::NoGpuCapacity { .. }) => {
            let reason = e.to_string();
            assert!(reason.contains("2 GPU(s)"), "{reason}");
        }
        other => panic!("a GPU runtime's assign with no GPU host left: {other:?}"),
    }
    let cuda_sessions_on_the_small_host: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE host_id = 'i-00000001' AND runtime = 'cuda' AND status = 'WAITING'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(cuda_sessions_on_the_small_host, 2, "never handed out");
    // A runtime without GPUs still goes anywhere.
    assert!(assign(&db.pool, "d0", &request(None)).await.is_ok());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_types_capacity_follows_the_gpu_rule_unless_given() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO instance_types (name, vcpus, gpus, memory_mib, capacity) VALUES \
         ('g4dn.12xlarge', 48, 4, 196608, NULL), ('g5.4xlarge', 16, 1, 65536, NULL), \
         ('c5.4xlarge', 16, 0, 32768, NULL), ('g5.48xlarge', 192, 8, 786432, 10)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (name, want) in [
        ("g4dn.12xlarge", 12), // min(4 × 3, 48 ÷ 4)
        ("g5.4xlarge", 3),     // min(1 × 3, 16 ÷ 4)
        ("c5.4xlarge", 8),     // 16 ÷ 2
        ("g5.48xlarge", 10),   // given explicitly
    ] {
        let got = scaling_service::state::capacity_of(&db.pool, name)
            .await
            .unwrap();
        assert_eq!(got, want, "{name}");
    }
    db.drop_database().await;
}
