//! The browser gateway as a user's browser sees it: a real headless Chromium
//! that trusts the test CA (certificate checks on) and resolves `*.gw.test`
//! to the gateway, in front of the whole system (scaling service with its
//! TLS gateway, local hosts, Docker containers of the test app). What the
//! reqwest-based `gateway.rs` asserts by headers, this asserts by what pages
//! and their scripts can and cannot do.

mod support;

use std::time::{Duration, Instant};

use berth_testing::browser::{skip_without_browser, Browser, BrowserError, BrowserOptions};
use serde_json::{json, Value};
use support::gateway::{GatewaySystem, DOMAIN};
use support::*;

/// A login's meta refresh is immediate; a page still not there after this is
/// stuck, not slow.
const NAVIGATION_DEADLINE: Duration = Duration::from_secs(20);
const ECHO_MESSAGE: &str = "hello from the session's own page";

/// Round-trips one message over a WebSocket to `arguments[0]`; reports the
/// events seen in order, and the echo or the close code.
const WEBSOCKET_SCRIPT: &str = r#"
const [url, message, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const events = [];
let finished = false;
const finish = (outcome) => { if (!finished) { finished = true; done(Object.assign({ events }, outcome)); } };
let ws;
try { ws = new WebSocket(url); } catch (e) { finish({ thrown: String(e) }); return; }
ws.onopen = () => { events.push('open'); ws.send(message); };
ws.onmessage = (e) => { events.push('message'); finish({ echoed: String(e.data) }); ws.close(); };
ws.onerror = () => events.push('error');
ws.onclose = (e) => { events.push('close'); finish({ code: e.code, clean: e.wasClean }); };
"#;

/// `fetch(arguments[0], {credentials: 'include'})`: what the page could
/// read, or how the fetch rejected.
const FETCH_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
fetch(arguments[0], { credentials: 'include' })
  .then((r) => r.text().then((body) => done({ read: true, status: r.status, body })))
  .catch((e) => done({ read: false, error: String(e) }));
"#;

/// Frames `arguments[0]` in the page; reports whether the page could reach
/// the frame's document before it navigated (the initial about:blank is
/// the parent's origin) and after it loaded.
const IFRAME_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
const reach = (frame) => {
  try {
    const doc = frame.contentDocument;
    if (doc === null) return { contentDocument: null };
    return { contentDocument: 'readable', text: doc.body ? doc.body.innerText : '' };
  } catch (e) {
    return { contentDocument: 'threw ' + e.name };
  }
};
const viaWindow = (frame) => {
  try { return 'readable: ' + frame.contentWindow.document.body.innerText; }
  catch (e) { return 'threw ' + e.name; }
};
const frame = document.createElement('iframe');
document.body.appendChild(frame);
const before = reach(frame);
// Set after appending: Chromium fires a load for the initial about:blank
// synchronously inside appendChild.
frame.onload = () => done({ before, after: reach(frame), window_document: viaWindow(frame) });
frame.src = arguments[0];
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_a_session_logs_in_securely_and_no_other_session_can_read_it() {
    let test = "in_a_real_browser_a_session_logs_in_securely_and_no_other_session_can_read_it";
    if skip_without_browser(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let gw = GatewaySystem::start().await;
    let alice = gw.system.user("alice");
    let (a, _, _) = running_session(&alice, "gw-browser-a").await;
    let (b, _, _) = running_session(&alice, "gw-browser-b").await;
    let (a_id, b_id) = (a.session_id.clone(), b.session_id.clone());
    eprintln!(
        "system up with sessions A={a_id} B={b_id} after {:?}",
        started.elapsed()
    );
    let (browser, ()) = tokio::join!(
        Browser::start(BrowserOptions {
            trust_ca_pem: Some(gw.ca.ca_pem().to_owned()),
            host_resolver_rules: format!("MAP *.{DOMAIN} 127.0.0.1"),
            artifacts_dir: berth_testing::browser::default_artifacts_dir(),
        }),
        wait_for_settled_addresses(),
    );
    let browser = ok(browser);

    // Step 1: alice opens A's login link and lands on A's app, securely.
    log_in(&browser, &gw, "alice", &a_id, "/headers").await;
    let page = ok(browser
        .execute(
            "return { secure: window.isSecureContext, origin: location.origin, \
                      cookie: document.cookie, body: document.body.innerText };",
            vec![],
        )
        .await);
    assert_eq!(
        page["secure"],
        json!(true),
        "A's page is a secure context (the app may use crypto.subtle, service workers…): {page}"
    );
    assert_eq!(
        page["origin"],
        json!(gw.url(&a_id, "")),
        "A's page runs in A's own origin: {page}"
    );
    let seen: Value = serde_json::from_str(page["body"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("A's /headers page is not the app's JSON ({e}): {page}"));
    assert_eq!(
        seen["host"],
        format!("{a_id}.{DOMAIN}:{}", gw.addr.port()),
        "the app sees the hostname the user browses"
    );
    assert!(
        !seen["cookie"]
            .as_str()
            .unwrap_or("")
            .contains("__Host-berth"),
        "the gateway's login cookie must not reach the app: {seen}"
    );
    assert_eq!(
        page["cookie"],
        json!(""),
        "the login cookie is HttpOnly: no script, the app's included, can read it"
    );
    let echo = ok(browser
        .execute_async(
            WEBSOCKET_SCRIPT,
            vec![json!(wss_url(&gw, &a_id)), json!(ECHO_MESSAGE)],
        )
        .await);
    assert_eq!(
        echo["echoed"],
        json!(ECHO_MESSAGE),
        "A's page talks to its app over a WebSocket through the gateway: {echo}"
    );
    let shot = ok(browser.screenshot("gateway/session-a.png").await);
    eprintln!("A's page: {}", shot.display());
    // Chromium asks every origin for /favicon.ico; the test app has none, so
    // the app's own 404 (passed through the gateway) is the one error to expect.
    let favicon = gw.url(&a_id, "/favicon.ico");
    let errors: Vec<String> = ok(browser.console_errors().await)
        .into_iter()
        .filter(|e| !e.starts_with(&format!("{favicon} - Failed to load resource")))
        .collect();
    assert!(
        errors.is_empty(),
        "A's page logged console errors: {errors:?}"
    );

    // Step 2: the same browser also logged in to B. B's page (an app the
    // user runs, perhaps showing untrusted content) must not read A, even
    // though the browser holds A's cookie and the two names are same-site.
    log_in(&browser, &gw, "alice", &b_id, "/headers").await;
    let own = ok(browser
        .execute_async(FETCH_SCRIPT, vec![json!(gw.url(&b_id, "/headers"))])
        .await);
    assert_eq!(
        (&own["read"], &own["status"]),
        (&json!(true), &json!(200)),
        "control: B's page reads B's own app: {own}"
    );

    let refused_before = cross_origin_refusals(&gw).await;
    let stolen = ok(browser
        .execute_async(FETCH_SCRIPT, vec![json!(gw.url(&a_id, "/headers"))])
        .await);
    assert_eq!(
        stolen["read"],
        json!(false),
        "B's page must not read A's app through fetch with A's cookie: {stolen}"
    );
    assert!(
        stolen["error"].as_str().unwrap_or("").contains("TypeError"),
        "the fetch rejects as a network (CORS) error: {stolen}"
    );
    let refused_after_fetch = cross_origin_refusals(&gw).await;
    assert_eq!(
        refused_after_fetch,
        refused_before + 1,
        "the gateway itself refused B's fetch of A (CROSS_ORIGIN), not only the browser's CORS check: \
         A's app never saw the request"
    );

    let own_echo = ok(browser
        .execute_async(
            WEBSOCKET_SCRIPT,
            vec![json!(wss_url(&gw, &b_id)), json!(ECHO_MESSAGE)],
        )
        .await);
    assert_eq!(
        own_echo["echoed"],
        json!(ECHO_MESSAGE),
        "control: B's page opens B's own WebSocket: {own_echo}"
    );
    // Drop the CORS error of the refused fetch: what follows is the WebSocket's.
    let _ = ok(browser.console_errors().await);
    let hijack = ok(browser
        .execute_async(
            WEBSOCKET_SCRIPT,
            vec![json!(wss_url(&gw, &a_id)), json!("B reaching into A")],
        )
        .await);
    let events = hijack["events"].as_array().cloned().unwrap_or_default();
    assert!(
        !events.contains(&json!("open")) && hijack.get("echoed").is_none(),
        "B's page must not open a WebSocket to A's app (WebSockets skip CORS; only the gateway's Origin check stops it): {hijack}"
    );
    assert!(
        events.contains(&json!("error")) && events.contains(&json!("close")),
        "the page is told the WebSocket failed (error, then close): {hijack}"
    );
    let ws_console = ok(browser.console_errors().await);
    eprintln!("Chromium on the refused WebSocket: {hijack}; console: {ws_console:?}");
    assert!(
        ws_console.iter().any(|e| e.contains("403")),
        "the console names the gateway's 403, so a developer sees why: {ws_console:?}"
    );
    assert_eq!(
        cross_origin_refusals(&gw).await,
        refused_after_fetch + 1,
        "the gateway refused B's WebSocket to A as CROSS_ORIGIN"
    );

    let own_frame = ok(browser
        .execute_async(IFRAME_SCRIPT, vec![json!(gw.url(&b_id, "/headers"))])
        .await);
    assert_eq!(
        own_frame["after"]["contentDocument"],
        json!("readable"),
        "control: B's page reads a frame of its own origin: {own_frame}"
    );
    let refused_before_framing = cross_origin_refusals(&gw).await;
    let framed = ok(browser
        .execute_async(IFRAME_SCRIPT, vec![json!(gw.url(&a_id, "/headers"))])
        .await);
    assert_eq!(
        cross_origin_refusals(&gw).await,
        refused_before_framing + 1,
        "the gateway refused to let B's page frame A (no clickjacking between sessions)"
    );
    assert_eq!(
        framed["before"]["contentDocument"],
        json!("readable"),
        "the frame starts as B's about:blank, so what follows is the origin change: {framed}"
    );
    assert_eq!(
        framed["after"]["contentDocument"],
        Value::Null,
        "once A is in the frame, B's page gets no contentDocument: A's page stays unreadable: {framed}"
    );
    assert!(
        framed["window_document"]
            .as_str()
            .unwrap_or("")
            .starts_with("threw SecurityError"),
        "reaching A's document through contentWindow throws: {framed}"
    );
    let shot = ok(browser.screenshot("gateway/session-b-framing-a.png").await);
    eprintln!("B's page with A framed: {}", shot.display());

    ok(browser.quit().await);
    gw.stop().await;
    eprintln!("{test} took {:?}", started.elapsed());
}

/// The browser's answer, or a panic that says what the browser was doing.
#[track_caller]
fn ok<T>(result: Result<T, BrowserError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn wss_url(gw: &GatewaySystem, label: &str) -> String {
    format!("wss://{label}.{DOMAIN}:{}/echo", gw.addr.port())
}

/// Opens `user`'s login link for `session` (with `next`) in the browser, as
/// a user clicking it would, and waits until the meta refresh has landed on
/// `next` and that page has loaded.
async fn log_in(browser: &Browser, gw: &GatewaySystem, user: &str, session: &str, next: &str) {
    let answer = gw.login_code(user, session).await;
    assert_eq!(answer.status(), 201, "a login code for {session}");
    let answer: Value = answer.json().await.unwrap();
    let link = format!("{}&next={next}", answer["url"].as_str().unwrap());
    ok(browser.goto(&link).await);
    let landing = gw.url(session, next);
    let deadline = Instant::now() + NAVIGATION_DEADLINE;
    loop {
        let title = ok(browser.title().await);
        assert_ne!(
            title, "Privacy error",
            "Chromium refused the gateway's certificate for {session}: a user would see a warning"
        );
        let url = ok(browser.current_url().await);
        let page = ok(browser
            .execute(
                "return { ready: document.readyState, \
                          refreshes: document.querySelector('meta[http-equiv=refresh]') !== null, \
                          text: document.body ? document.body.innerText : '' };",
                vec![],
            )
            .await);
        let loaded = page["ready"] == json!("complete");
        if url == landing && loaded {
            return;
        }
        // A loaded page at the link that does not move on is the gateway's
        // refusal, not the login page.
        assert!(
            !(url == link && loaded && page["refreshes"] == json!(false)),
            "the login link answered no login page (title {title:?}): {}",
            page["text"]
        );
        assert!(
            Instant::now() < deadline,
            "the login link did not land on {landing} within {NAVIGATION_DEADLINE:?}: at {url}, title {title:?}, page {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `berth_scaler_gateway_refusals_total{reason="CROSS_ORIGIN"}` on the
/// scaler's metrics (absent: none yet).
async fn cross_origin_refusals(gw: &GatewaySystem) -> u64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|line| {
            line.strip_prefix("berth_scaler_gateway_refusals_total{reason=\"CROSS_ORIGIN\"} ")
        })
        .map_or(0, |value| {
            value
                .trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("a counter value, not {value:?}: {e}"))
                as u64
        })
}
