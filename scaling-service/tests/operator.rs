//! The operator surface on the real control plane and PostgreSQL: only an
//! operator (the operator token, a JWT with the operator claim, or the
//! dashboard's cookie) reaches fleet views and actions; each action changes
//! exactly what it says, is idempotent and lands in the audit trail with its
//! subject, target and outcome; the trail pages and filters correctly over
//! 10,000 records and cannot be rewritten.

mod support;

use std::collections::HashSet;

use reqwest::Method;
use scaling_service::service;
use serde_json::{json, Value};
use support::*;

async fn call(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
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

/// The audit records of `action`, newest first, once the batch is written.
async fn audited(
    db: &TestDb,
    action: &str,
    at_least: usize,
) -> Vec<(String, String, String, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT actor_kind, actor, target, outcome FROM audit WHERE action = $1 ORDER BY id DESC",
        )
        .bind(action)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if rows.len() >= at_least {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{at_least} {action} records not written in 10 s: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every audit record `query` selects, following `next_before` from page to
/// page (at most `max_pages`, or paging does not end).
async fn audit_pages(base: &str, query: &str, max_pages: usize) -> Vec<Value> {
    let mut records = vec![];
    let mut before: Option<i64> = None;
    for _ in 0..max_pages {
        let mut url = format!("{base}/v1/operator/audit?{query}");
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let (status, page) =
            call(Method::GET, &url, Some(berth_testing::OPERATOR_TOKEN), None).await;
        assert_eq!(status, 200, "{page}");
        records.extend(page["records"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_i64() {
            Some(next) => before = Some(next),
            None => return records,
        }
    }
    panic!("paging {query} did not end within {max_pages} pages");
}

/// Every operator route, as (method, path, body).
fn operator_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/v1/operator/regions", None),
        (Method::GET, "/v1/operator/hosts", None),
        (Method::GET, "/v1/operator/sessions", None),
        (Method::GET, "/v1/operator/endings", None),
        (Method::GET, "/v1/operator/launches", None),
        (Method::GET, "/v1/operator/history", None),
        (Method::GET, "/v1/operator/audit", None),
        (Method::POST, "/v1/operator/hosts/i-00000001/drain", None),
        (
            Method::POST,
            "/v1/operator/sessions/00000000-0000-4000-8000-000000000000/end",
            None,
        ),
        (
            Method::PATCH,
            "/v1/operator/regions/us-east-1",
            Some(json!({"enabled": false})),
        ),
        (
            Method::POST,
            "/v1/operator/regions/us-east-1/deploy",
            Some(json!({"image_id": "ami-22222222"})),
        ),
        (
            Method::POST,
            "/v1/operator/regions/us-east-1/deploy/release",
            None,
        ),
        (
            Method::POST,
            "/v1/operator/regions/us-east-1/deploy/abort",
            None,
        ),
        (Method::GET, "/ui/", None),
        (Method::GET, "/ui/hosts", None),
        (Method::GET, "/ui/sessions", None),
        (Method::GET, "/ui/audit", None),
        (Method::GET, "/ui/app.js", None),
        (Method::GET, "/ui/events?page=overview", None),
        (Method::GET, "/regions", None),
        (Method::GET, "/metrics", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_strangers_are_refused_on_every_operator_route_and_nothing_changes() {
    let db = TestDb::new().await;
    warm_hosts(&db, 1, 2).await;
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    let user = jwt("alice", AUDIENCE, 600);
    let forged = operator_jwt("mallory").replace('.', "x.");
    let state = || async {
        let row: (bool, i32, String, i64) = sqlx::query_as(
            "SELECT r.enabled, r.target_free_slots, (SELECT status::text FROM hosts LIMIT 1), (SELECT count(*) FROM deploys) FROM regions r",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        row
    };
    let before = state().await;
    for (method, path, body) in operator_routes() {
        let url = format!("{base}{path}");
        let (status, answer) = call(method.clone(), &url, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without credential: {answer}");
        let (status, answer) = call(method.clone(), &url, Some(&forged), body.clone()).await;
        assert_eq!(status, 401, "{method} {path} with a forged JWT: {answer}");
        let (status, answer) = call(method.clone(), &url, Some(&user), body.clone()).await;
        assert_eq!(status, 403, "{method} {path} with a user's JWT: {answer}");
        if !path.starts_with("/ui/") {
            assert_eq!(code(&answer), "OPERATOR_ONLY", "{method} {path}");
        }
    }
    assert_eq!(state().await, before, "a refused request changed something");
    // Refused users are on record (strangers are not: they have no name).
    let refused = audited(&db, "operator.refused", operator_routes().len()).await;
    assert!(refused
        .iter()
        .all(|(kind, actor, _, outcome)| kind == "user"
            && actor == "alice"
            && outcome == "refused"));

    // The same routes answer the operator's JWT and the operator token.
    for token in [
        operator_jwt("ops-alice"),
        berth_testing::OPERATOR_TOKEN.to_owned(),
    ] {
        for path in ["/v1/operator/regions", "/ui/", "/regions", "/metrics"] {
            let response = reqwest::Client::new()
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_action_changes_exactly_what_it_says_once_and_is_audited() {
    let db = TestDb::new().await;
    warm_hosts(&db, 2, 2).await;
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    let ops = operator_jwt("ops-alice");
    let op = |method: Method, path: &str, body: Option<Value>| {
        let ops = ops.clone();
        let url = format!("{base}{path}");
        async move { call(method, &url, Some(&ops), body).await }
    };

    // A user's assign, to have a session to end (and an assign on record).
    let user = jwt("alice", AUDIENCE, 600);
    let (status, assigned) = call(
        Method::POST,
        &format!("{base}/sessions"),
        Some(&user),
        Some(json!({"runtime": "desktop", "regions": [REGION], "client_commit": "sha-1"})),
    )
    .await;
    assert_eq!(status, 201, "{assigned}");
    let session = assigned["session_id"].as_str().unwrap().to_owned();
    let session_token = assigned["token"].as_str().unwrap().to_owned();
    let session_host = assigned["host"]["id"].as_str().unwrap().to_owned();
    let other_host = if session_host == "i-00000001" {
        "i-00000002"
    } else {
        "i-00000001"
    };

    // Drain: the other host only, once.
    let (status, answer) = op(
        Method::POST,
        &format!("/v1/operator/hosts/{other_host}/drain"),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["changed"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    let statuses = host_statuses(&db).await;
    for (id, status) in &statuses {
        let expected = if id == other_host {
            "DRAINING"
        } else {
            "ACTIVE"
        };
        assert_eq!(status, expected, "{statuses:?}");
    }
    let (status, answer) = op(
        Method::POST,
        &format!("/v1/operator/hosts/{other_host}/drain"),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["changed"].clone()),
        (200, json!(false)),
        "{answer}"
    );
    let (status, answer) = op(Method::POST, "/v1/operator/hosts/i-nope/drain", None).await;
    assert_eq!((status, code(&answer)), (404, "NOT_FOUND"));

    // End: that session only, once; then it is already ending.
    let (status, answer) = op(
        Method::POST,
        &format!("/v1/operator/sessions/{session}/end"),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["changed"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    let (dying, others): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'DYING'), count(*) FILTER (WHERE status <> 'DYING' AND user_id IS NOT NULL) FROM sessions",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((dying, others), (1, 0));
    let reason: String =
        sqlx::query_scalar("SELECT status_reason FROM sessions WHERE id = $1::uuid")
            .bind(&session)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(reason, "ended by operator ops-alice");
    let (_, answer) = op(
        Method::POST,
        &format!("/v1/operator/sessions/{session}/end"),
        None,
    )
    .await;
    assert_eq!(answer["changed"], json!(false));

    // Region: target and cap, then disabled; bad values refused, nothing changed.
    let (status, answer) = op(
        Method::PATCH,
        "/v1/operator/regions/us-east-1",
        Some(json!({"target_free_slots": 5, "max_hosts": 7})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["before"]["target_free_slots"], json!(0));
    assert_eq!(
        answer["after"],
        json!({"enabled": true, "target_free_slots": 5, "max_hosts": 7})
    );
    let (status, answer) = op(
        Method::PATCH,
        "/v1/operator/regions/us-east-1",
        Some(json!({"max_hosts": -1})),
    )
    .await;
    assert_eq!((status, code(&answer)), (400, "BAD_REQUEST"));
    let (status, _) = op(
        Method::PATCH,
        "/v1/operator/regions/us-east-1",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200);
    let region: (bool, i32, i32) =
        sqlx::query_as("SELECT enabled, target_free_slots, max_hosts FROM regions")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(region, (false, 5, 7));
    let (_, answer) = op(
        Method::PATCH,
        "/v1/operator/regions/us-east-1",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(answer["changed"], json!(false));
    // Keep the controller from launching into moto for the rest.
    op(
        Method::PATCH,
        "/v1/operator/regions/us-east-1",
        Some(json!({"target_free_slots": 0})),
    )
    .await;

    // Deploy: start (twice: the same one), release (twice), then a new one aborted (twice).
    let (status, started) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy",
        Some(json!({"image_id": "ami-22222222", "client_sha": "sha-2"})),
    )
    .await;
    assert_eq!(
        (status, started["changed"].clone()),
        (200, json!(true)),
        "{started}"
    );
    let (_, again) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy",
        Some(json!({"image_id": "ami-22222222"})),
    )
    .await;
    assert_eq!(
        (again["changed"].clone(), again["deploy_id"].clone()),
        (json!(false), started["deploy_id"].clone())
    );
    let (status, other) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy",
        Some(json!({"image_id": "ami-33333333"})),
    )
    .await;
    assert_eq!((status, code(&other)), (409, "DEPLOY_IN_PROGRESS"));
    let (status, released) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy/release",
        None,
    )
    .await;
    assert_eq!(
        (status, released["changed"].clone()),
        (200, json!(true)),
        "{released}"
    );
    let (_, released) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy/release",
        None,
    )
    .await;
    assert_eq!(released["changed"], json!(false));
    let (status, aborted) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy/abort",
        None,
    )
    .await;
    assert_eq!(
        (status, aborted["changed"].clone()),
        (200, json!(true)),
        "{aborted}"
    );
    let deploy: (String, String) = sqlx::query_as("SELECT state::text, error FROM deploys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        deploy,
        ("FAILED".into(), "aborted by operator ops-alice".into())
    );
    let image: String =
        sqlx::query_scalar("SELECT status::text FROM images WHERE image_id = 'ami-22222222'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(image, "FAILED");
    let (_, aborted) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy/abort",
        None,
    )
    .await;
    assert_eq!(aborted["changed"], json!(false));
    let (status, none) = op(
        Method::POST,
        "/v1/operator/regions/us-east-1/deploy/release",
        None,
    )
    .await;
    assert_eq!((status, code(&none)), (409, "NO_DEPLOY"));

    // The trail: every action with subject, target and outcome.
    for (action, target, outcomes) in [
        ("host.drain", other_host, vec!["ok", "ok"]),
        ("host.drain", "i-nope", vec!["refused"]),
        ("session.end", session.as_str(), vec!["ok", "ok"]),
        (
            "region.update",
            "us-east-1",
            vec!["ok", "refused", "ok", "ok", "ok"],
        ),
        ("deploy.start", "us-east-1", vec!["ok", "ok", "refused"]),
        ("deploy.release", "us-east-1", vec!["ok", "ok", "refused"]),
        ("deploy.abort", "us-east-1", vec!["ok", "ok"]),
    ] {
        let rows = audited(&db, action, 1).await;
        let mut got: Vec<&str> = rows
            .iter()
            .filter(|(_, _, t, _)| t == target)
            .map(|(kind, actor, _, outcome)| {
                assert_eq!((kind.as_str(), actor.as_str()), ("operator", "ops-alice"));
                outcome.as_str()
            })
            .collect();
        got.reverse();
        assert_eq!(got, outcomes, "{action} {target}");
    }
    let assigns = audited(&db, "session.assign", 1).await;
    assert_eq!(
        assigns[0],
        ("user".into(), "alice".into(), session.clone(), "ok".into())
    );
    // Never a token: neither the session's nor a JWT.
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit WHERE audit::text LIKE '%' || $1 || '%' OR audit::text LIKE '%' || $2 || '%' OR audit::text LIKE '%' || $3 || '%'",
    )
    .bind(&session_token)
    .bind(&ops[..40])
    .bind(&user[..40])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
    let address: Option<String> =
        sqlx::query_scalar("SELECT address FROM audit WHERE action = 'host.drain' LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(address.as_deref(), Some("127.0.0.1"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_api_pages_and_filters_ten_thousand_records_and_the_trail_is_append_only() {
    let db = TestDb::new().await;
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    // 10,000 records over 10,000 seconds: actions in turn, every 7th refused.
    sqlx::query(
        "INSERT INTO audit (at, actor_kind, actor, action, target, region, outcome) \
         SELECT now() - make_interval(secs => 10000 - n), 'operator', 'ops-' || (n % 3), \
                (ARRAY['host.drain', 'session.end', 'region.update', 'deploy.start'])[1 + n % 4], \
                'target-' || (n % 50), 'us-east-1', CASE WHEN n % 7 = 0 THEN 'refused' ELSE 'ok' END \
         FROM generate_series(1, 10000) n",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let token = berth_testing::OPERATOR_TOKEN;

    // Every record exactly once, newest first, across pages of 1,000.
    let ids: Vec<i64> = audit_pages(&base, "limit=1000", 11)
        .await
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 10_000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10_000);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "not newest first");

    // Filters, alone and together, against the same count in SQL.
    for (query, sql) in [
        ("action=host.drain", "action = 'host.drain'"),
        (
            "actor=ops-1&outcome=refused",
            "actor = 'ops-1' AND outcome = 'refused'",
        ),
        (
            "target=target-7&action=session.end",
            "target = 'target-7' AND action = 'session.end'",
        ),
        (
            "region=us-east-1&outcome=ok",
            "region = 'us-east-1' AND outcome = 'ok'",
        ),
    ] {
        let expected: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM audit WHERE {sql}"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let records = audit_pages(&base, &format!("{query}&limit=700"), 15).await;
        for r in &records {
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap();
                assert_eq!(r[k], json!(v), "{query}: {r}");
            }
        }
        assert_eq!(records.len() as i64, expected, "{query}");
    }
    // A time window.
    let since = (chrono::Utc::now() - chrono::Duration::seconds(100))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, page) = call(
        Method::GET,
        &format!("{base}/v1/operator/audit?since={since}&limit=1000"),
        Some(token),
        None,
    )
    .await;
    let n = page["records"].as_array().unwrap().len();
    assert!((95..=102).contains(&n), "{n} records in the last 100 s");
    // Bad filters are refused, not ignored.
    for bad in [
        "outcome=maybe",
        "since=yesterday",
        "limit=0",
        "limit=1001",
        "before=x",
        "colour=red",
    ] {
        let (status, answer) = call(
            Method::GET,
            &format!("{base}/v1/operator/audit?{bad}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!((status, code(&answer)), (400, "BAD_REQUEST"), "{bad}");
    }

    // Append-only: no update, no delete outside the retention sweep.
    for statement in [
        "UPDATE audit SET actor = 'someone-else'",
        "DELETE FROM audit",
    ] {
        let error = sqlx::query(statement).execute(&db.pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    let pruned = scaling_service::audit::prune(&db.pool, 1).await.unwrap();
    assert_eq!(pruned, 0, "nothing is older than a day");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_logs_in_with_a_cookie_that_only_the_dashboard_may_use_for_changes() {
    let db = TestDb::new().await;
    warm_hosts(&db, 1, 2).await;
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A user's JWT does not log in.
    let refused = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", jwt("alice", AUDIENCE, 600))])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get("set-cookie").is_none());
    let login = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", operator_jwt("ops-bob"))])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let page = http
        .get(format!("{base}/ui/hosts"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("i-00000001") && html.contains("ops-bob"),
        "{html}"
    );

    let drain = format!("{base}/v1/operator/hosts/i-00000001/drain");
    // Without the dashboard's header, or from another origin: refused.
    for (header, origin) in [
        (None, None),
        (Some("berth-ui"), Some("http://evil.example")),
    ] {
        let mut req = http.post(&drain).header("cookie", &cookie);
        if let Some(h) = header {
            req = req.header("x-requested-with", h);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let answer = req.send().await.unwrap();
        assert_eq!(answer.status(), 403);
    }
    assert_eq!(host_statuses(&db).await[0].1, "ACTIVE");
    let answer = http
        .post(&drain)
        .header("cookie", &cookie)
        .header("x-requested-with", "berth-ui")
        .header("origin", &base)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(host_statuses(&db).await[0].1, "DRAINING");
    let rows = audited(&db, "host.drain", 1).await;
    assert_eq!(rows[0].1, "ops-bob");
    let logins = audited(&db, "operator.login", 2).await;
    assert_eq!(
        logins.iter().map(|r| r.3.as_str()).collect::<Vec<_>>(),
        vec!["ok", "refused"]
    );
    // A tampered cookie is nobody's.
    let tampered = cookie.replace("berth-operator=", "berth-operator=x");
    let page = http
        .get(format!("{base}/ui/"))
        .header("cookie", tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401);
    svc.stop().await;
}
