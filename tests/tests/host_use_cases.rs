//! The other use cases on real Docker and PostgreSQL: the HTTPS/WebSocket
//! session proxy and what it refuses, the init call whose answer only the
//! owner gets, idle reaping, and per-user persistent data.

#[path = "host_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use support::*;

/// A runtime like a web IDE: the shell app on 8080 (readiness), the helper
/// app on 8081 (WebSocket echo, init, streaming).
async fn add_web_runtime(db: &TestDb, name: &str, extra: Value) {
    let init = extra.get("init").cloned();
    let volume = extra.get("user_volume").cloned();
    let idle = extra
        .get("idle_timeout_s")
        .and_then(Value::as_i64)
        .map(|s| s as i32);
    sqlx::query(
        "INSERT INTO runtimes (name, image, ports, memory_mib, readiness, ready_timeout_s, idle_timeout_s, init, user_volume) \
         VALUES ($1, $2, '[{\"container_port\": 8080, \"protocol\": \"tcp\"}, {\"container_port\": 8081, \"protocol\": \"tcp\"}]', \
                 64, '{\"http\": {\"port\": 8080, \"path\": \"/ready\"}}', 10, $3, $4, $5)",
    )
    .bind(name)
    .bind(test_image())
    .bind(idle)
    .bind(init)
    .bind(volume)
    .execute(&db.pool)
    .await
    .expect("inserting the web runtime");
}

async fn web_host(runtime: Value, capacity: u16, extra: &[&str]) -> (TestDb, TestHost) {
    let db = TestDb::new().await;
    add_web_runtime(&db, "web", runtime).await;
    let th = start_host(
        &db,
        HostArgs {
            capacity,
            runtime: "web",
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    )
    .await;
    wait_warm(&db, &th, i64::from(capacity)).await;
    (db, th)
}

/// Allocates a warm session for `user` and finishes it: (id, token, answer).
async fn running_session(db: &TestDb, th: &TestHost, user: &str) -> (Uuid, String, Value) {
    let (id, token) = allocate(&db.pool, &th.host_id, user).await;
    let response = th.json_transport(&token, id, "{\"user\": \"x\"}").await;
    assert_eq!(response.status(), 200, "json_transport for {user}");
    (id, token, response.json().await.unwrap())
}

/// A WebSocket to `path` on the host API, TLS pinned to the host's cert.
async fn websocket(
    th: &TestHost,
    path: &str,
    header: (&str, &str),
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    let config = berth_common::tls::pinned_client_config(&th.cert_sha256).unwrap();
    let tcp = tokio::net::TcpStream::connect(th.api).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}{path}", th.api.port())
        .into_client_request()
        .unwrap();
    let name =
        tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(header.0.as_bytes()).unwrap();
    request
        .headers_mut()
        .insert(name, header.1.parse().unwrap());
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, tls),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

async fn echo_round_trip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, payload: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(payload.clone()).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo within 10 s")
        .expect("the socket stays open")
        .unwrap();
    assert_eq!(echoed, payload);
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_carries_http_and_websockets_to_the_sessions_own_container_only() {
    let (db, th) = web_host(json!({"init": {"port": 8081, "path": "/init"}}), 2, &[]).await;
    let (a, token_a, answer_a) = running_session(&db, &th, "alice").await;
    let (b, token_b, answer_b) = running_session(&db, &th, "bob").await;
    let client = th.client();

    // WebSocket echo, text and a 256 KiB binary message, with the bearer token.
    let mut ws = websocket(
        &th,
        &format!("/sessions/{a}/proxy/8081/echo"),
        ("authorization", &format!("Bearer {token_a}")),
    )
    .await
    .expect("a WebSocket through the proxy");
    echo_round_trip(&mut ws, Message::text("hello through berth")).await;
    echo_round_trip(&mut ws, Message::binary(vec![7u8; 256 * 1024])).await;
    ws.close(None).await.unwrap();

    // A browser: log in (token in the URL once), get a cookie, use only it.
    let no_redirects = reqwest::Client::builder()
        .use_preconfigured_tls(berth_common::tls::pinned_client_config(&th.cert_sha256).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .get(th.url(&format!(
            "/sessions/{a}/login?token={token_a}&next=/sessions/{a}/proxy/8081/headers"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(
        login.headers()["location"],
        format!("/sessions/{a}/proxy/8081/headers")
    );
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        &format!("Path=/sessions/{a}/"),
    ] {
        assert!(
            set_cookie.contains(attribute),
            "{set_cookie} lacks {attribute}"
        );
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    // The login is on the control plane's audit trail, under the owner.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logins: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT actor, outcome, address FROM audit WHERE action = 'session.login' AND target = $1 AND detail->>'via' = 'proxy'",
        )
        .bind(a.to_string())
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if !logins.is_empty() {
            assert_eq!(
                logins,
                vec![("alice".into(), "ok".into(), Some("127.0.0.1".into()))]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record of the proxy login"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = websocket(
        &th,
        &format!("/sessions/{a}/proxy/8081/echo"),
        ("cookie", &cookie),
    )
    .await
    .expect("a WebSocket with the login cookie");
    echo_round_trip(&mut ws, Message::text("cookie works")).await;
    drop(ws);

    // What the app sees: no Berth credentials, the prefix it is served under.
    let headers: Value = client
        .get(th.url(&format!("/sessions/{a}/proxy/8081/headers")))
        .header("cookie", format!("{cookie}; app=kept"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(headers["cookie"], "app=kept", "{headers}");
    assert_eq!(
        headers["x-forwarded-prefix"],
        format!("/sessions/{a}/proxy/8081")
    );
    let with_bearer: Value = client
        .get(th.url(&format!("/sessions/{a}/proxy/8081/headers")))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(with_bearer.get("authorization").is_none(), "{with_bearer}");

    // Bodies stream both ways.
    let streamed = client
        .get(th.url(&format!("/sessions/{a}/proxy/8081/stream?bytes=5000000")))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.bytes().await.unwrap().len(), 5_000_000);
    let uploaded: Value = client
        .post(th.url(&format!("/sessions/{a}/proxy/8081/upload")))
        .bearer_auth(&token_a)
        .body(vec![1u8; 3_000_000])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(uploaded["bytes"], 3_000_000);
    // The shell app's port is proxied too.
    let config = client
        .get(th.url(&format!("/sessions/{a}/proxy/8080/config.json")))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(config.text().await.unwrap(), "{\"user\": \"x\"}");

    // Refused: each with its status and code.
    let get = |path: String, auth: Option<(&str, String)>| {
        let mut request = client.get(th.url(&path));
        if let Some((name, value)) = auth {
            request = request.header(name, value);
        }
        request.send()
    };
    let bearer = |t: &str| Some(("authorization", format!("Bearer {t}")));
    type Case<'a> = (&'a str, String, Option<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "no credentials",
            format!("/sessions/{a}/proxy/8081/ready"),
            None,
            401,
            "UNAUTHORIZED",
        ),
        (
            "bob's token on alice's session",
            format!("/sessions/{a}/proxy/8081/ready"),
            bearer(&token_b),
            403,
            "FORBIDDEN",
        ),
        (
            "alice's cookie on bob's session",
            format!("/sessions/{b}/proxy/8081/ready"),
            Some(("cookie", cookie.clone())),
            403,
            "FORBIDDEN",
        ),
        (
            "a forged cookie",
            format!("/sessions/{a}/proxy/8081/ready"),
            Some(("cookie", "berth_proxy=99999999999.00".into())),
            403,
            "FORBIDDEN",
        ),
        (
            "an undeclared port (PostgreSQL)",
            format!("/sessions/{a}/proxy/5432/"),
            bearer(&token_a),
            403,
            "PORT_NOT_ALLOWED",
        ),
        (
            "an undeclared port (SSH)",
            format!("/sessions/{a}/proxy/22/"),
            bearer(&token_a),
            403,
            "PORT_NOT_ALLOWED",
        ),
        (
            "port 0",
            format!("/sessions/{a}/proxy/0/"),
            bearer(&token_a),
            400,
            "BAD_PORT",
        ),
        (
            "a port out of range",
            format!("/sessions/{a}/proxy/70000/"),
            bearer(&token_a),
            400,
            "BAD_PORT",
        ),
        (
            "an address as the port",
            format!("/sessions/{a}/proxy/127.0.0.1:5432/"),
            bearer(&token_a),
            400,
            "BAD_PORT",
        ),
        (
            "a host:port as the port",
            format!("/sessions/{a}/proxy/db.internal:8081/"),
            bearer(&token_a),
            400,
            "BAD_PORT",
        ),
        (
            "an unknown session",
            format!("/sessions/{}/proxy/8081/", Uuid::new_v4()),
            bearer(&token_a),
            403,
            "FORBIDDEN",
        ),
        (
            "a path-traversal id",
            "/sessions/..%2F..%2Fetc/proxy/8081/".to_owned(),
            bearer(&token_a),
            403,
            "FORBIDDEN",
        ),
    ];
    for (what, path, auth, status, code) in cases {
        let got = error_code(get(path, auth).await.unwrap()).await;
        assert_eq!(got, (status, code.to_owned()), "{what}");
    }
    // An address in the path is only a path, served by the session's own app.
    let smuggled = client
        .get(th.url(&format!("/sessions/{a}/proxy/8081/http://127.0.0.1:5432/")))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(smuggled.status(), 404, "the app's own 404");
    let said = smuggled.text().await.unwrap();
    assert!(
        said.contains("no route for GET /http://127.0.0.1:5432/"),
        "{said}"
    );
    // Logins with a wrong token or a redirect off the session are refused.
    for (what, query, status) in [
        ("bob's token", format!("token={token_b}"), 403),
        ("no token", String::new(), 401),
        (
            "an open redirect",
            format!("token={token_a}&next=https://evil.example/"),
            400,
        ),
        (
            "another session's path",
            format!("token={token_a}&next=/sessions/{b}/proxy/8081/"),
            400,
        ),
    ] {
        let response = no_redirects
            .get(th.url(&format!("/sessions/{a}/login?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "login with {what}");
        assert!(response.headers().get("set-cookie").is_none());
    }
    // A WebSocket to another session with alice's token never opens.
    assert!(websocket(
        &th,
        &format!("/sessions/{b}/proxy/8081/echo"),
        ("authorization", &format!("Bearer {token_a}"))
    )
    .await
    .is_err());

    // Init: each owner got their own answer, and can read it again; nobody else can.
    let password_a = answer_a["init"]["password"]
        .as_str()
        .expect("an init answer")
        .to_owned();
    assert_eq!(password_a.len(), 32);
    assert_eq!(answer_a["init"]["params"]["session_id"], a.to_string());
    assert_eq!(answer_a["init"]["params"]["user_id"], "alice");
    assert_ne!(answer_b["init"]["password"], answer_a["init"]["password"]);
    let status_a: Value = client
        .get(th.url(&format!("/sessions/{a}")))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status_a["init"]["password"], password_a);
    let by_bob = client
        .get(th.url(&format!("/sessions/{a}")))
        .bearer_auth(&token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(by_bob.status(), 403);
    assert!(!by_bob.text().await.unwrap().contains(&password_a));
    // At rest it is sealed: the row does not hold the password.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT init_sealed FROM sessions WHERE id = $1")
        .bind(a)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!sealed
        .windows(password_a.len())
        .any(|w| w == password_a.as_bytes()));

    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_before_running_is_not_proxied_and_a_failing_init_fails_the_session() {
    let (db, th) = web_host(
        json!({"init": {"port": 8081, "path": "/no-such-init"}}),
        2,
        &[],
    )
    .await;
    let (id, token) = allocate(&db.pool, &th.host_id, "carol").await;
    eventually("the claim", Duration::from_secs(10), || async {
        session_status(&db.pool, id).await.as_deref() == Some("CONNECTING")
    })
    .await;
    let early = th
        .client()
        .get(th.url(&format!("/sessions/{id}/proxy/8081/ready")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(early).await,
        (409, "SESSION_NOT_RUNNING".to_owned())
    );

    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(error_code(response).await, (502, "INIT_FAILED".to_owned()));
    eventually(
        "the failed session to be gone",
        Duration::from_secs(20),
        || async { session_status(&db.pool, id).await.is_none() },
    )
    .await;
    let (outcome, reason): (String, String) =
        sqlx::query_as("SELECT outcome::text, reason FROM session_history WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "FAILED");
    assert!(reason.contains("404"), "{reason}");
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_reaped_and_a_connected_one_is_not() {
    const IDLE_S: u64 = 2;
    let (db, th) = web_host(json!({"idle_timeout_s": IDLE_S}), 2, &[]).await;
    let (idle, _, _) = running_session(&db, &th, "dora").await;
    let (busy, token_busy, _) = running_session(&db, &th, "erik").await;
    let started = Instant::now();
    // A terminal-style user: one WebSocket open, and silent.
    let mut ws = websocket(
        &th,
        &format!("/sessions/{busy}/proxy/8081/echo"),
        ("authorization", &format!("Bearer {token_busy}")),
    )
    .await
    .unwrap();
    echo_round_trip(&mut ws, Message::text("hi")).await;

    eventually(
        "the idle session to be reaped",
        Duration::from_secs(20),
        || async { session_status(&db.pool, idle).await.is_none() },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(IDLE_S));
    let (outcome, reason): (String, String) =
        sqlx::query_as("SELECT outcome::text, reason FROM session_history WHERE id = $1")
            .bind(idle)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "REAPED");
    assert!(reason.contains("idle"), "{reason}");
    let (gone, _) = docker_status(&["inspect", &format!("berth-{idle}")]);
    assert!(!gone, "the reaped container is removed");

    // The connected one outlived the timeout twice over and still runs.
    eventually("a second idle period", Duration::from_secs(10), || async {
        started.elapsed() >= Duration::from_secs(2 * IDLE_S + 1)
    })
    .await;
    assert_eq!(
        session_status(&db.pool, busy).await.as_deref(),
        Some("RUNNING")
    );
    echo_round_trip(&mut ws, Message::text("still here")).await;

    // Nobody connected any more: it goes too, and the pool refills both slots.
    ws.close(None).await.unwrap();
    drop(ws);
    eventually(
        "the disconnected session to be reaped",
        Duration::from_secs(20),
        || async { session_status(&db.pool, busy).await.is_none() },
    )
    .await;
    wait_warm(&db, &th, 2).await;
    assert_eq!(free_slots(&db.pool, &th.host_id).await, 2);
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_volume_follows_them_and_no_one_else() {
    let root = std::env::temp_dir().join(format!("berth-users-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    let root_arg = root.display().to_string();
    let (db, th) = web_host(
        json!({"user_volume": {"path": "/home/app/data", "uid": 1000, "gid": 1000}}),
        2,
        &["--user-data-root", &root_arg],
    )
    .await;

    let (first, token, _) = running_session(&db, &th, "fay").await;
    let container = format!("berth-{first}");
    let (ok, _) = docker_status(&[
        "exec",
        "-u",
        "1000",
        &container,
        "sh",
        "-c",
        "echo kept > /home/app/data/note.txt",
    ]);
    assert!(ok, "the app's user writes in its volume");
    let deleted = th.delete_session(&token, first).await;
    assert_eq!(deleted.status(), 200);
    eventually(
        "the first session to be gone",
        Duration::from_secs(20),
        || async { session_status(&db.pool, first).await.is_none() },
    )
    .await;
    wait_warm(&db, &th, 2).await;
    assert!(
        !th.state_dir
            .join("volumes")
            .join(first.to_string())
            .exists(),
        "the mount point is removed"
    );

    // Her next session has it; another user's does not.
    let (second, _, _) = running_session(&db, &th, "fay").await;
    let (ok, note) = docker_status(&[
        "exec",
        &format!("berth-{second}"),
        "cat",
        "/home/app/data/note.txt",
    ]);
    assert!(ok && note == b"kept\n", "the file is in fay's next session");
    let (other, _, _) = running_session(&db, &th, "gus").await;
    let (ok, listing) = docker_status(&[
        "exec",
        &format!("berth-{other}"),
        "ls",
        "-A",
        "/home/app/data",
    ]);
    assert!(ok, "gus has a volume too");
    assert!(
        listing.is_empty(),
        "gus sees none of fay's files: {}",
        String::from_utf8_lossy(&listing)
    );

    // On the host: one directory per user, owned by the app's user, 0700.
    use std::os::unix::fs::MetadataExt;
    let dirs: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 2);
    for dir in &dirs {
        let meta = dir.metadata().unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1000, 1000, 0o700)
        );
        assert_eq!(
            dir.file_name().len(),
            64,
            "named by a hash, not the user id"
        );
    }

    th.cleanup().await;
    // fay's data outlives her sessions and the host.
    let fay = dirs
        .iter()
        .find(|d| d.path().join("note.txt").exists())
        .expect("fay's directory keeps her file");
    assert_eq!(
        std::fs::read(fay.path().join("note.txt")).unwrap(),
        b"kept\n"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_keeps_the_proxy_the_init_answer_and_the_users_data() {
    let root = std::env::temp_dir().join(format!("berth-users-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    let root_arg = root.display().to_string();
    let (db, mut th) = web_host(
        json!({"init": {"port": 8081, "path": "/init"},
               "user_volume": {"path": "/data", "uid": 1000, "gid": 1000}}),
        1,
        &["--user-data-root", &root_arg],
    )
    .await;
    let (id, token, answer) = running_session(&db, &th, "hana").await;
    let container = format!("berth-{id}");
    let (ok, _) = docker_status(&[
        "exec",
        "-u",
        "1000",
        &container,
        "sh",
        "-c",
        "echo before > /data/f",
    ]);
    assert!(ok);

    // SIGTERM-equivalent stop, then a new daemon on the same state.
    th.daemon.take().unwrap().stop().await;
    let th = start_with(th.args.clone(), th.host_id.clone(), th.state_dir.clone()).await;
    let mut ws = websocket(
        &th,
        &format!("/sessions/{id}/proxy/8081/echo"),
        ("authorization", &format!("Bearer {token}")),
    )
    .await
    .expect("the adopted session is proxied");
    echo_round_trip(&mut ws, Message::text("after restart")).await;
    drop(ws);
    let status: Value = th
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
    assert_eq!(status["init"], answer["init"], "the same init answer");
    let (ok, data) = docker_status(&["exec", &container, "cat", "/data/f"]);
    assert!(ok && data == b"before\n", "the volume is still mounted");

    let deleted = th.delete_session(&token, id).await;
    assert_eq!(deleted.status(), 200);
    eventually(
        "the session to be gone",
        Duration::from_secs(20),
        || async { session_status(&db.pool, id).await.is_none() },
    )
    .await;
    assert!(!th.state_dir.join("volumes").join(id.to_string()).exists());
    th.cleanup().await;
    let kept: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
    assert_eq!(
        std::fs::read(kept[0].path().join("f")).unwrap(),
        b"before\n"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_runtime_row_replaces_warm_sessions_and_spares_running_ones() {
    let (db, th) = web_host(json!({}), 2, &[]).await;
    let (running, token, _) = running_session(&db, &th, "ivan").await;
    let env_of = |id: Uuid| {
        docker(&[
            "inspect",
            "-f",
            "{{json .Config.Env}}",
            &format!("berth-{id}"),
        ])
    };
    assert!(!env_of(running).contains("RUNTIME_GENERATION=2"));

    // The operator changes the row; its NOTIFY reaches the host.
    sqlx::query("UPDATE runtimes SET env = '{\"RUNTIME_GENERATION\": \"2\"}' WHERE name = 'web'")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(
        "a warm session of the new settings",
        Duration::from_secs(30),
        || async {
            let warm: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM sessions WHERE host_id = $1 AND status = 'WAITING'",
            )
            .bind(&th.host_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            warm.len() == 1 && env_of(warm[0]).contains("RUNTIME_GENERATION=2")
        },
    )
    .await;
    // The user's session kept its container and still serves.
    assert_eq!(
        session_status(&db.pool, running).await.as_deref(),
        Some("RUNNING")
    );
    let ready = th
        .client()
        .get(th.url(&format!("/sessions/{running}/proxy/8081/ready")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    th.cleanup().await;
}
