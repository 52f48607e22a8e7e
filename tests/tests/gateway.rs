//! The browser gateway on the real parts: the scaling service with its
//! gateway on a TLS listener (a test CA's wildcard certificate), local
//! host-service processes, Docker containers of the test app. Clients resolve
//! `*.gw.test` to loopback themselves.

mod support;

use std::time::Duration;

use berth_common::grant::{unix_now, Grant, GrantSigner, GRANT_HEADER};
use berth_tests::client::HostClient;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::gateway::{cookie_pair, GatewaySystem, DOMAIN};
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// A WebSocket to `label`'s `/echo` through the gateway, sending `cookie`
/// and `origin`; the echo of one message, or the refusal's status.
async fn echo_through_gateway(
    gw: &GatewaySystem,
    label: &str,
    cookie: &str,
    origin: &str,
) -> Result<String, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("{label}.{DOMAIN}")).unwrap();
    let tls = tokio_rustls::TlsConnector::from(gw.tls_config())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut request = format!("wss://{label}.{DOMAIN}:{}/echo", gw.addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let (mut ws, _) = match tokio_tungstenite::client_async(request, tls).await {
        Ok(pair) => pair,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    };
    ws.send(Message::text("hello through the gateway"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo in time")
        .unwrap()
        .unwrap();
    Ok(echoed.into_text().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_is_its_own_origin_reached_only_with_its_own_login() {
    let _one = ONE_AT_A_TIME.lock().await;
    let gw = GatewaySystem::start().await;
    let alice = gw.system.user("alice");
    let bob = gw.system.user("bob");
    let (a, _a_token, _) = running_session(&alice, "gw-a").await;
    let (b, b_token, _) = running_session(&bob, "gw-b").await;
    let (a_id, b_id) = (a.session_id.clone(), b.session_id.clone());
    let a_8080 = format!("{a_id}--8080");
    let a_9999 = format!("{a_id}--9999");
    let unknown = uuid::Uuid::new_v4().to_string();
    let client = gw.client(&[&a_id, &b_id, &a_8080, &a_9999, &unknown]);

    // Refusals before any login.
    let (status, code) = code_of(client.get(gw.url(&unknown, "/")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "UNKNOWN_SESSION"));
    let (status, code) = code_of(client.get(gw.url(&a_id, "/headers")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "LOGIN_REQUIRED"));
    let (status, code) = code_of(client.get(gw.url(&a_9999, "/")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "PORT_NOT_DECLARED"));

    // Only the owner gets a login code; a code logs in once, on its own session.
    assert_eq!(gw.login_code("bob", &a_id).await.status(), 404);
    let answer: Value = gw.login_code("alice", &a_id).await.json().await.unwrap();
    let code = answer["code"].as_str().unwrap().to_owned();
    assert_eq!(
        answer["url"],
        gw.url(&a_id, &format!("/_berth/login?code={code}"))
    );
    let on_b = client
        .get(gw.url(&b_id, &format!("/_berth/login?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(on_b).await,
        (403, "LOGIN_REFUSED".into()),
        "A's code on B"
    );
    let answer: Value = gw.login_code("alice", &a_id).await.json().await.unwrap();
    let code = answer["code"].as_str().unwrap().to_owned();
    let login_url = gw.url(&a_id, &format!("/_berth/login?code={code}&next=/headers"));
    let login = client.get(&login_url).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in [
        "__Host-berth=",
        "Path=/",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
    ] {
        assert!(
            set_cookie.contains(attribute),
            "{set_cookie} lacks {attribute}"
        );
    }
    assert!(
        !set_cookie.contains("Domain"),
        "a host-only cookie: {set_cookie}"
    );
    let a_cookie = cookie_pair(&login);
    let page = login.text().await.unwrap();
    assert!(
        page.contains("url=/headers"),
        "moves on within the host: {page}"
    );
    let again = client.get(&login_url).send().await.unwrap();
    assert_eq!(
        code_of(again).await,
        (403, "LOGIN_REFUSED".into()),
        "a spent code"
    );
    // Logins, refused ones too, are on the audit trail under the session's owner.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let logins: Vec<(String, String)> = sqlx::query_as(
            "SELECT actor, outcome FROM audit WHERE action = 'session.login' AND target = $1 \
             AND detail->>'via' = 'gateway' ORDER BY id",
        )
        .bind(&a_id)
        .fetch_all(&gw.system.db.pool)
        .await
        .unwrap();
        if logins.len() >= 2 {
            assert_eq!(
                logins,
                vec![
                    ("alice".into(), "ok".into()),
                    ("alice".into(), "refused".into())
                ]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway logins not audited: {logins:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let evil = client
        .post(gw.url(&b_id, "/_berth/login"))
        .form(&[("token", b_token.as_str()), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(evil).await,
        (400, "BAD_NEXT".into()),
        "no open redirect"
    );

    // With the cookie the app answers, seeing its own hostname and none of
    // the gateway's credentials.
    let seen: Value = client
        .get(gw.url(&a_id, "/headers"))
        .header("cookie", format!("theme=dark; {a_cookie}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["host"], format!("{a_id}.{DOMAIN}:{}", gw.addr.port()));
    assert_eq!(seen["cookie"], "theme=dark", "the app's own cookies only");
    for header in [GRANT_HEADER, "x-forwarded-prefix", "authorization"] {
        assert!(
            seen.get(header).is_none(),
            "{header} reached the app: {seen}"
        );
    }

    // A's cookie opens neither B nor A's other port (each its own origin).
    let (status, code) = code_of(
        client
            .get(gw.url(&b_id, "/headers"))
            .header("cookie", &a_cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (403, "COOKIE_NOT_FOR_THIS_SESSION")
    );
    let (status, code) = code_of(
        client
            .get(gw.url(&a_8080, "/"))
            .header("cookie", &a_cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (403, "COOKIE_NOT_FOR_THIS_SESSION")
    );
    let a_8080_cookie = gw.log_in("alice", &a_8080).await;
    let root = client
        .get(gw.url(&a_8080, "/"))
        .header("cookie", &a_8080_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        root.status(),
        200,
        "busybox httpd on the second declared port"
    );

    // A page of another origin is refused even with the right cookie.
    let (status, code) = code_of(
        client
            .get(gw.url(&a_id, "/headers"))
            .header("cookie", &a_cookie)
            .header(
                "origin",
                format!("https://{b_id}.{DOMAIN}:{}", gw.addr.port()),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "CROSS_ORIGIN"));

    // WebSockets: from the session's own origin they echo; from B's, refused.
    let a_origin = format!("https://{a_id}.{DOMAIN}:{}", gw.addr.port());
    let b_origin = format!("https://{b_id}.{DOMAIN}:{}", gw.addr.port());
    assert_eq!(
        echo_through_gateway(&gw, &a_id, &a_cookie, &a_origin).await,
        Ok("hello through the gateway".to_owned())
    );
    assert_eq!(
        echo_through_gateway(&gw, &a_id, &a_cookie, &b_origin).await,
        Err(403)
    );

    // Logging in needs https: behind a TLS terminator it must say so.
    let plain = reqwest::Client::new()
        .post(format!("{}/_berth/login", gw.system.url))
        .header("host", format!("{b_id}.{DOMAIN}"))
        .form(&[("token", b_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(plain).await, (400, "HTTPS_REQUIRED".into()));
    let forwarded = reqwest::Client::new()
        .post(format!("{}/_berth/login", gw.system.url))
        .header("host", format!("{b_id}.{DOMAIN}"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", b_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        forwarded.status(),
        200,
        "TLS in front: the API listener serves the gateway"
    );

    // The host checks every grant itself: forged, expired, or for another
    // target are refused; only a current one for this session and port passes.
    let host = HostClient::pinned(&a.host).unwrap();
    let key: Vec<u8> = sqlx::query_scalar("SELECT secret FROM control_keys WHERE name = 'grants'")
        .fetch_one(&gw.system.db.pool)
        .await
        .unwrap();
    let signer = GrantSigner::from_pkcs8(&key).unwrap();
    let forger = GrantSigner::from_pkcs8(&GrantSigner::generate_pkcs8().unwrap()).unwrap();
    let grant = |port: u16, expires: u64| Grant {
        host: a.host.id.clone(),
        session: a_id.parse().unwrap(),
        port,
        expires,
    };
    let now = unix_now();
    for (value, want) in [
        ("not a grant".to_owned(), "GRANT_INVALID"),
        (forger.sign(&grant(8081, now + 60)), "GRANT_INVALID"),
        (signer.sign(&grant(8081, now - 1)), "GRANT_EXPIRED"),
        (signer.sign(&grant(8080, now + 60)), "GRANT_WRONG_TARGET"),
    ] {
        let answer = host
            .raw()
            .get(host.url(&format!("/sessions/{a_id}/proxy/8081/headers")))
            .header(GRANT_HEADER, value)
            .send()
            .await
            .unwrap();
        assert_eq!(code_of(answer).await, (403, want.to_owned()));
    }
    let good = host
        .raw()
        .get(host.url(&format!("/sessions/{a_id}/proxy/8081/headers")))
        .header(GRANT_HEADER, signer.sign(&grant(8081, now + 60)))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);

    // The gateway counts what it did and refused.
    let metrics = gw.metrics().await;
    for line in [
        "berth_scaler_gateway_refusals_total{reason=\"COOKIE_NOT_FOR_THIS_SESSION\"} 2",
        "berth_scaler_gateway_refusals_total{reason=\"UNKNOWN_SESSION\"} 1",
        "berth_scaler_gateway_upgrades_total 1",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
    assert!(metrics.contains("berth_scaler_gateway_bytes_total{direction=\"down\"}"));

    // A session whose host is gone is refused as such.
    let b_cookie = gw.log_in("bob", &b_id).await;
    let pid = gw.system.host_pid(&b.host.id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = client
        .get(gw.url(&b_id, "/headers"))
        .header("cookie", &b_cookie)
        .send()
        .await
        .unwrap();
    let (status, code) = code_of(gone).await;
    assert_eq!(status, 502);
    assert!(
        code == "HOST_UNREACHABLE" || code == "HOST_GONE",
        "a typed refusal for a gone host: {code}"
    );
    gw.stop().await;
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The highest RSS of `pid` seen until the returned sender is dropped.
fn watch_peak_rss(
    pid: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let peak = tokio::spawn(async move {
        let mut peak = rss(pid);
        loop {
            tokio::select! {
                _ = &mut stopped => return peak,
                _ = tokio::time::sleep(Duration::from_millis(50)) => peak = peak.max(rss(pid)),
            }
        }
    });
    (stop, peak)
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_stream_through_a_gateway_replica_in_bounded_memory_and_its_death_leaves_the_session_running(
) {
    let _one = ONE_AT_A_TIME.lock().await;
    let gw = GatewaySystem::start().await;
    let alice = gw.system.user("alice");
    let (a, _, _) = running_session(&alice, "gw-big").await;
    let id = a.session_id.clone();

    // A second control-plane replica, its own process, serving the gateway.
    let (replica, replica_addr) = gw
        .replica(&berth_testing::workspace_binary("scaling-service"))
        .await;
    let port = replica_addr.port();
    let pid = replica.0.id();
    // Logged in on one replica, served by the other: the replicas share keys.
    let cookie = gw.log_in("alice", &id).await;
    let client = gw.client_via(&[&id], replica_addr);
    let url = |path: &str| format!("https://{id}.{DOMAIN}:{port}{path}");
    let warm_up = client
        .get(url("/headers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(warm_up.status(), 200, "the replica serves the session");
    let before = rss(pid);

    // 1 GiB down.
    let (stop, peak) = watch_peak_rss(pid);
    let started = std::time::Instant::now();
    let mut download = client
        .get(url(&format!("/stream?bytes={}", 1024 * MIB)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    let down_secs = started.elapsed().as_secs_f64();
    assert_eq!(received, 1024 * MIB, "every byte of the download arrived");

    // 256 MiB up.
    let started = std::time::Instant::now();
    let upload: Value = client
        .post(url("/upload"))
        .header("cookie", &cookie)
        .body(vec![b'u'; (256 * MIB) as usize])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let up_secs = started.elapsed().as_secs_f64();
    assert_eq!(upload["bytes"], 256 * MIB, "the app got the whole upload");
    let _ = stop.send(());
    let grown = peak.await.unwrap().saturating_sub(before);
    eprintln!(
        "gateway replica: RSS {} MiB before, peak +{:.1} MiB; 1 GiB down in {down_secs:.1} s, 256 MiB up in {up_secs:.1} s",
        before / MIB,
        grown as f64 / MIB as f64
    );
    assert!(
        grown < 32 * MIB,
        "the gateway's memory grew by {grown} bytes streaming 1 GiB down and 256 MiB up"
    );

    // The replica dies mid-download: the client's stream breaks, the
    // session runs on and the other replica serves it.
    let mut download = client
        .get(url(&format!("/stream?bytes={}", 1024 * MIB)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let mut received = 0u64;
    while received < 8 * MIB {
        received += download.chunk().await.unwrap().unwrap().len() as u64;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let broken = async {
        loop {
            match download.chunk().await {
                Ok(Some(chunk)) => received += chunk.len() as u64,
                Ok(None) | Err(_) => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), broken)
        .await
        .expect("the download ends when its gateway dies");
    assert!(received < 1024 * MIB, "the download was cut, not finished");
    drop(replica);
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM sessions WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&gw.system.db.pool)
            .await
            .unwrap();
    assert_eq!(status, "RUNNING", "a gateway's death is not the session's");
    let other = gw
        .client(&[&id])
        .get(gw.url(&id, "/headers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "the other replica serves the session");
    gw.stop().await;
}
