//! The operator dashboard as an operator's browser sees it: a real headless
//! Chromium in front of a running control plane with two local hosts. The
//! operator logs in with an operator JWT through the login form; the
//! overview, sessions, hosts and audit pages render under their strict CSP
//! with nothing on the console; the overview's chart counts the assigns this
//! test made; a host drained with the hosts page's button and its
//! confirmation dialog turns DRAINING in the page by the server's push, with
//! no reload; the audit page names the operator who drained it. Logged out,
//! every page and event stream is the login page with a 401 and every action
//! a 401, from the page's own scripts as from any client; a user's JWT gets a
//! 403 and a forged cookie a 401, and nothing changes. Screenshots go to
//! target/test-artifacts/dashboard/.

mod support;

use std::time::{Duration, Instant};

use berth_testing::browser::{
    default_artifacts_dir, skip_without_browser, Browser, BrowserError, BrowserOptions,
};
use berth_testing::OPERATOR_TOKEN;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

/// The subject of the operator's JWT: whom the dashboard and the audit trail
/// name.
const OPERATOR: &str = "dana.ops@example.com";
/// Assigns the user makes before the operator looks: 3 of the 4 warm slots,
/// so one host is full and draining it stops no container (an address
/// change would make Chromium abort the page's event stream).
const ASSIGNS: usize = 3;
/// The dashboard pushes every second; a page not updated after this is
/// stuck, not slow.
const LIVE_DEADLINE: Duration = Duration::from_secs(15);
/// The history is sampled every second (`--history-sample-secs 1`) and the
/// assigns' audit records are written in batches.
const CHART_DEADLINE: Duration = Duration::from_secs(30);

/// Region `arguments[0]`'s chart once a push has brought it with at least
/// `arguments[1]` assigns: what it shows.
const CHART_SCRIPT: &str = r#"
const svg = document.querySelector(`#live-charts svg.chart[data-region="${arguments[0]}"]`);
const pushed = document.getElementById('live-charts').dataset.updated !== undefined;
if (!svg || !pushed || Number(svg.dataset.assigns) < arguments[1]) return null;
const row = document.querySelector(`#live-regions tr[data-region="${arguments[0]}"]`);
return {
  assigns: Number(svg.dataset.assigns),
  samples: Number(svg.dataset.samples),
  bars: svg.querySelectorAll('rect.assigns').length,
  lines: svg.querySelectorAll('polyline').length,
  legend: svg.querySelector('text.legend').textContent,
  width: svg.getBoundingClientRect().width,
  region_sessions: row ? row.cells[5].textContent : null,
};
"#;

/// Host `arguments[0]`'s row on the hosts page, once the page is live and
/// (unless `arguments[1]` is null) the row's status is `arguments[1]`.
const HOST_ROW_SCRIPT: &str = r#"
const row = document.querySelector(`#live-hosts tr[data-host="${arguments[0]}"]`);
if (!row || document.body.dataset.live !== 'open') return null;
const status = row.querySelector('td.status').textContent;
if (arguments[1] !== null && status !== arguments[1]) return null;
const button = row.querySelector('button.action');
return {
  status,
  reason: row.cells[8].textContent,
  button: button ? button.textContent : null,
  not_reloaded: window.__berthNotReloaded === true,
  updated: Number(document.getElementById('live-hosts').dataset.updated || 0),
};
"#;

/// The audit page's rows once it is live and shows a `host.drain`.
const AUDIT_SCRIPT: &str = r#"
const rows = [...document.querySelectorAll('#live-audit tr[data-audit]')].map((r) => ({
  who: r.cells[1].textContent, what: r.cells[2].textContent, target: r.cells[3].textContent,
  region: r.cells[4].textContent, outcome: r.cells[6].textContent,
}));
return document.body.dataset.live === 'open' && rows.some((r) => r.what === 'host.drain') ? rows : null;
"#;

/// Each `[method, path, body]` of `arguments[0]` as the dashboard's own
/// script sends it (same origin, its header, the browser's cookies): the
/// status, content type and body of each answer.
const FETCH_ALL_SCRIPT: &str = r#"
const done = arguments[arguments.length - 1];
Promise.all(arguments[0].map(([method, path, body]) =>
  fetch(path, {
    method, credentials: 'same-origin', body: body === null ? undefined : body,
    headers: { 'X-Requested-With': 'berth-ui', 'Content-Type': 'application/json' },
  })
    .then((r) => r.text().then((text) => ({ method, path, status: r.status, type: r.headers.get('content-type'), body: text })))
    .catch((e) => ({ method, path, error: String(e) }))
)).then(done);
"#;

/// What the logged-out browser shows at a dashboard URL.
const REFUSED_PAGE_SCRIPT: &str = r#"
return {
  login: document.querySelector('form[action="/ui/login"] input[name=token]') !== null,
  live: document.querySelectorAll('section.live').length,
  scripts: document.scripts.length,
  text: document.body.innerText,
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_an_operator_watches_the_fleet_live_and_drains_a_host_and_nobody_else_can(
) {
    let test = "in_a_real_browser_an_operator_watches_the_fleet_live_and_drains_a_host_and_nobody_else_can";
    if skip_without_browser(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    // Two local hosts of two slots, all warm. At most two hosts: a drained
    // host counts, so none is launched (no new containers) while the
    // browser looks.
    let system = System::start_with(4, 2, None, &["--history-sample-secs", "1"]).await;
    system.warm(2, 4).await;
    let alice = system.user("alice");
    let mut sessions = vec![];
    for i in 0..ASSIGNS {
        let assigned = match alice
            .assign("desktop", &[REGION], Some(&format!("dashboard-{i}")))
            .await
        {
            Ok(assigned) => assigned,
            Err(e) => panic!("assign {i}: {e}\n{}", system.describe().await),
        };
        sessions.push(assigned.session_id);
    }
    // Three sessions on two hosts of two: one host is full.
    let full: String = sqlx::query_scalar(
        "SELECT host_id FROM sessions WHERE user_id IS NOT NULL GROUP BY host_id HAVING count(*) = 2",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    let other: String =
        sqlx::query_scalar("SELECT id FROM hosts WHERE status = 'ACTIVE' AND id <> $1")
            .bind(&full)
            .fetch_one(&system.db.pool)
            .await
            .unwrap();
    eprintln!(
        "system up with {ASSIGNS} assigns (full host {full}, other {other}) after {:?}",
        started.elapsed()
    );
    let (browser, ()) = tokio::join!(
        Browser::start(BrowserOptions {
            trust_ca_pem: None,
            host_resolver_rules: String::new(),
            artifacts_dir: default_artifacts_dir(),
        }),
        wait_for_settled_addresses(),
    );
    let browser = ok(browser);
    let base = system.url.clone();

    // Step 1: the operator logs in through the form and sees the overview,
    // whose chart counts the assigns.
    ok(browser.goto(&format!("{base}/ui/login")).await);
    ok(browser
        .fill("input[name=token]", &operator_jwt(OPERATOR))
        .await);
    ok(browser
        .click("form[action='/ui/login'] button[type=submit]")
        .await);
    let landed = ok(browser
        .wait_for(
            "the login lands on the live overview",
            LIVE_DEADLINE,
            "return location.pathname === '/ui/' && document.readyState === 'complete' \
                    && document.body.dataset.live === 'open' \
               ? { who: document.querySelector('header .who').textContent, cookie: document.cookie } \
               : null;",
            vec![],
        )
        .await);
    assert_eq!(
        landed,
        json!({ "who": OPERATOR, "cookie": "" }),
        "the page names the operator, and no script can read the login cookie"
    );
    let cookies = ok(browser.cookies().await);
    let login = cookies
        .iter()
        .find(|c| c["name"] == "berth-operator")
        .unwrap_or_else(|| panic!("the login left no berth-operator cookie: {cookies:?}"));
    assert_eq!(
        (&login["httpOnly"], &login["sameSite"], &login["secure"]),
        (&json!(true), &json!("Strict"), &json!(false)),
        "the login cookie is HttpOnly and SameSite=Strict (not Secure over plain-HTTP loopback): {login}"
    );
    let chart = ok(browser
        .wait_for(
            "the region's chart, pushed live, counts the assigns",
            CHART_DEADLINE,
            CHART_SCRIPT,
            vec![json!(REGION), json!(ASSIGNS)],
        )
        .await);
    eprintln!("the overview's chart: {chart}");
    assert_eq!(
        chart["assigns"],
        json!(ASSIGNS),
        "the chart counts exactly this test's assigns: {chart}"
    );
    assert!(
        chart["bars"].as_u64().unwrap_or(0) >= 1 && chart["lines"] == json!(2),
        "the chart draws the assigns as bars and free slots and sessions as lines: {chart}"
    );
    assert!(
        chart["legend"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("assigns {ASSIGNS}")),
        "the legend says how many assigns: {chart}"
    );
    assert!(
        chart["width"].as_f64().unwrap_or(0.0) > 100.0,
        "the chart is laid out visibly: {chart}"
    );
    assert_eq!(
        chart["region_sessions"],
        json!(ASSIGNS.to_string()),
        "the regions table counts the user sessions: {chart}"
    );
    assert_quiet_console(&browser, "the overview").await;
    let shot = ok(browser.screenshot("dashboard/overview.png").await);
    eprintln!("the overview: {}", shot.display());
    // Control: the console log read above does catch what the page's CSP
    // refuses (an injected inline script), so its silence means something.
    let ran = ok(browser
        .execute(
            "const s = document.createElement('script'); \
             s.textContent = 'window.__berthInline = true;'; \
             document.head.appendChild(s); \
             return window.__berthInline === true;",
            vec![],
        )
        .await);
    assert_eq!(ran, json!(false), "the page's CSP refuses inline script");
    let refused = console_errors_until(&browser, "the CSP violation", |seen| {
        seen.iter().any(|e| e.contains("Content Security Policy"))
    })
    .await;
    eprintln!("control, the console on a CSP violation: {refused:?}");

    // Step 2: the sessions page lists the user's sessions.
    ok(browser.goto(&format!("{base}/ui/sessions")).await);
    let listed = ok(browser
        .wait_for(
            "the sessions page lists the user's sessions",
            LIVE_DEADLINE,
            "const rows = [...document.querySelectorAll('#live-sessions tr[data-session]')]; \
             return document.body.dataset.live === 'open' && rows.length >= arguments[0] \
               ? rows.map((r) => ({ id: r.dataset.session, user: r.cells[1].textContent })) : null;",
            vec![json!(ASSIGNS)],
        )
        .await);
    let mut listed: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["user"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = sessions
        .iter()
        .map(|id| (id.clone(), "alice".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(
        listed, expected,
        "the sessions page lists exactly alice's sessions"
    );
    assert_quiet_console(&browser, "the sessions page").await;
    ok(browser.screenshot("dashboard/sessions.png").await);

    // Step 3: the operator drains the full host from the hosts page; the
    // row turns DRAINING by the server's push, in the same document.
    ok(browser.goto(&format!("{base}/ui/hosts")).await);
    let before = ok(browser
        .wait_for(
            "the hosts page shows the full host",
            LIVE_DEADLINE,
            HOST_ROW_SCRIPT,
            vec![json!(full), Value::Null],
        )
        .await);
    assert_eq!(
        (&before["status"], &before["button"]),
        (&json!("ACTIVE"), &json!("drain")),
        "the full host is ACTIVE with a drain button: {before}"
    );
    ok(browser
        .execute("window.__berthNotReloaded = true;", vec![])
        .await);
    ok(browser
        .click(&format!(
            "#live-hosts tr[data-host=\"{full}\"] button.action"
        ))
        .await);
    let question = ok(browser
        .wait_for(
            "the drain asks for confirmation",
            LIVE_DEADLINE,
            "return document.getElementById('confirm').open \
               ? document.getElementById('confirm-text').textContent : null;",
            vec![],
        )
        .await);
    assert!(
        question
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("Drain host {full}?")),
        "the dialog names the host: {question}"
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM hosts WHERE status = 'DRAINING'")
            .await,
        0,
        "nothing is drained before the operator confirms"
    );
    ok(browser.screenshot("dashboard/hosts-confirm.png").await);
    ok(browser.click("#confirm-yes").await);
    let flash = ok(browser
        .wait_for(
            "the page reports the drain's outcome",
            LIVE_DEADLINE,
            "const f = document.getElementById('flash'); \
             return f.textContent ? { text: f.textContent, class: f.className } : null;",
            vec![],
        )
        .await);
    assert_eq!(
        flash,
        json!({ "text": format!("Done: POST /v1/operator/hosts/{full}/drain"), "class": "ok" }),
        "the drain succeeded"
    );
    let after = ok(browser
        .wait_for(
            "the drained host turns DRAINING in the page",
            LIVE_DEADLINE,
            HOST_ROW_SCRIPT,
            vec![json!(full), json!("DRAINING")],
        )
        .await);
    eprintln!("the drained host's row: {after}");
    assert_eq!(
        after["not_reloaded"],
        json!(true),
        "the page was not reloaded: DRAINING came by the server's push: {after}"
    );
    assert!(
        after["updated"].as_f64().unwrap_or(0.0) > before["updated"].as_f64().unwrap_or(0.0),
        "the hosts section was replaced by a push after the drain: {before} → {after}"
    );
    assert_eq!(
        (&after["button"], &after["reason"]),
        (
            &Value::Null,
            &json!(format!("drained by operator {OPERATOR}"))
        ),
        "a DRAINING host has no drain button and says who drained it: {after}"
    );
    let still = ok(browser
        .execute(HOST_ROW_SCRIPT, vec![json!(other), Value::Null])
        .await);
    assert_eq!(
        still["status"],
        json!("ACTIVE"),
        "only the chosen host drains: {still}"
    );
    let (status, hosts) = call(
        Method::GET,
        &format!("{base}/v1/operator/hosts"),
        Credential::Bearer(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "the operator API lists the hosts: {hosts}");
    let api_status = |id: &str| {
        hosts["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["id"] == id))
            .map(|h| h["status"].clone())
    };
    assert_eq!(
        (api_status(&full), api_status(&other)),
        (Some(json!("DRAINING")), Some(json!("ACTIVE"))),
        "the operator API agrees with the page: {hosts}"
    );
    let db_status: String = sqlx::query_scalar("SELECT status::text FROM hosts WHERE id = $1")
        .bind(&full)
        .fetch_one(&system.db.pool)
        .await
        .unwrap();
    assert_eq!(db_status, "DRAINING", "the database has the host DRAINING");
    assert_quiet_console(&browser, "the hosts page").await;
    let shot = ok(browser.screenshot("dashboard/hosts-draining.png").await);
    eprintln!("the hosts page after the drain: {}", shot.display());

    // Step 4: the audit page names the operator who drained the host.
    ok(browser.goto(&format!("{base}/ui/audit")).await);
    let rows = ok(browser
        .wait_for(
            "the audit page shows the drain",
            LIVE_DEADLINE,
            AUDIT_SCRIPT,
            vec![],
        )
        .await);
    let rows = rows.as_array().unwrap();
    let drains: Vec<&Value> = rows.iter().filter(|r| r["what"] == "host.drain").collect();
    assert_eq!(
        drains,
        [&json!({
            "who": format!("operator: {OPERATOR}"),
            "what": "host.drain",
            "target": full,
            "region": REGION,
            "outcome": "ok",
        })],
        "one drain, by the logged-in operator, of the full host"
    );
    assert!(
        rows.iter().any(|r| r["what"] == "operator.login"
            && r["who"] == json!(format!("operator: {OPERATOR}"))
            && r["outcome"] == "ok"),
        "the login is on the trail too: {rows:?}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["what"] == "session.assign" && r["who"] == "user: alice")
            .count(),
        ASSIGNS,
        "and alice's assigns: {rows:?}"
    );
    assert_quiet_console(&browser, "the audit page").await;
    let shot = ok(browser.screenshot("dashboard/audit.png").await);
    eprintln!("the audit page: {}", shot.display());

    // Step 5: logged out, the browser sees the login page everywhere and
    // the page's own scripts change nothing.
    ok(browser
        .click("header form[action='/ui/logout'] button[type=submit]")
        .await);
    ok(browser
        .wait_for(
            "logging out lands on the login page",
            LIVE_DEADLINE,
            "return location.pathname === '/ui/login' && document.readyState === 'complete' \
                    && document.querySelector('input[name=token]') !== null;",
            vec![],
        )
        .await);
    let cookies = ok(browser.cookies().await);
    assert!(
        cookies.iter().all(|c| c["name"] != "berth-operator"),
        "logging out removes the login cookie: {cookies:?}"
    );
    let fleet_words = [
        full.as_str(),
        other.as_str(),
        "alice",
        OPERATOR,
        sessions[0].as_str(),
    ];
    let pages = ["/ui/", "/ui/hosts", "/ui/sessions", "/ui/audit"];
    for path in pages {
        ok(browser.goto(&format!("{base}{path}")).await);
        let page = ok(browser.execute(REFUSED_PAGE_SCRIPT, vec![]).await);
        assert_eq!(
            (&page["login"], &page["live"], &page["scripts"]),
            (&json!(true), &json!(0), &json!(0)),
            "logged out, {path} is the login page, with no live section or script: {page}"
        );
        let text = page["text"].as_str().unwrap_or("");
        assert!(
            text.contains("OPERATOR_ONLY"),
            "the refused page says why: {text:?}"
        );
        assert_no_fleet_data(&format!("{path} logged out"), text, &fleet_words);
    }
    // Chromium puts each refused page load on the console, with its status.
    let refusal = |path: &str| {
        format!("{base}{path} - Failed to load resource: the server responded with a status of 401")
    };
    let navigations = console_errors_until(&browser, "the page loads' 401s", |seen| {
        pages
            .iter()
            .all(|path| seen.iter().any(|e| e.starts_with(&refusal(path))))
    })
    .await;
    assert!(
        navigations.iter().all(|e| e.contains("status of 401")),
        "logged out, the console shows only the refused loads: {navigations:?}"
    );
    let shot = ok(browser.screenshot("dashboard/logged-out.png").await);
    eprintln!("a dashboard page logged out: {}", shot.display());
    let mut routes: Vec<Value> = ui_routes()
        .into_iter()
        .map(|path| json!(["GET", path, null]))
        .collect();
    routes.extend(
        action_routes(&other, &sessions[0])
            .into_iter()
            .map(|(method, path, body)| {
                json!([method.as_str(), path, body.map(|b| b.to_string())])
            }),
    );
    let answers = ok(browser
        .execute_async(FETCH_ALL_SCRIPT, vec![json!(routes)])
        .await);
    for answer in answers.as_array().unwrap() {
        let what = format!(
            "{} {} from the logged-out page",
            answer["method"], answer["path"]
        );
        assert_eq!(answer["status"], json!(401), "{what} is refused: {answer}");
        let body = answer["body"].as_str().unwrap_or("");
        assert_no_fleet_data(&what, body, &fleet_words);
        if answer["method"] == "GET" && answer["path"].as_str().unwrap_or("").starts_with("/ui/") {
            assert!(
                body.contains(r#"name="token""#)
                    && answer["type"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("text/html"),
                "{what} answers the login page: {answer}"
            );
        }
    }
    // The console shows each refused fetch as a 401, and nothing else.
    let errors = console_errors_until(&browser, "the fetches' 401s", |seen| {
        routes.iter().all(|r| {
            seen.iter()
                .any(|e| e.starts_with(&refusal(r[1].as_str().unwrap_or(""))))
        })
    })
    .await;
    assert!(
        errors.iter().all(|e| e.contains("status of 401")),
        "logged out, the console shows only the refused fetches: {errors:?}"
    );

    // The same routes from outside a browser: a user's JWT is a 403, a
    // forged login cookie a 401.
    let user_jwt =
        berth_tests::client::dev_user_token(SECRET, "alice", None, None, Duration::from_secs(600));
    // "alice" (base64url), a far expiry and a tag the control plane never made.
    let forged = "YWxpY2U.9999999999.00";
    for (method, path, body) in ui_routes()
        .into_iter()
        .map(|p| (Method::GET, p.to_owned(), None))
        .chain(action_routes(&other, &sessions[0]))
    {
        let url = format!("{base}{path}");
        let (status, answer) = call(
            method.clone(),
            &url,
            Credential::Bearer(&user_jwt),
            body.clone(),
        )
        .await;
        assert_eq!(
            status, 403,
            "{method} {path} with alice's JWT is refused: {answer}"
        );
        let (status, answer) = call(method.clone(), &url, Credential::Cookie(forged), body).await;
        assert_eq!(
            status, 401,
            "{method} {path} with a forged cookie is refused: {answer}"
        );
    }

    // Nothing the refused requests asked for happened.
    let after_refusals: (String, String, bool, i32, i64, i64) = sqlx::query_as(
        "SELECT (SELECT status::text FROM hosts WHERE id = $1), \
                (SELECT status::text FROM sessions WHERE id = $2::uuid), \
                r.enabled, r.target_free_slots, \
                (SELECT count(*) FROM deploys), \
                (SELECT count(*) FROM audit WHERE action = 'host.drain') \
         FROM regions r WHERE r.name = $3",
    )
    .bind(&other)
    .bind(&sessions[0])
    .bind(REGION)
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            after_refusals.0.as_str(),
            after_refusals.1 != "DYING",
            after_refusals.2,
            after_refusals.3,
            after_refusals.4,
            after_refusals.5
        ),
        ("ACTIVE", true, true, 4, 0, 1),
        "the refused requests changed nothing (other host, session, region, deploys, drains): {after_refusals:?}"
    );

    ok(browser.quit().await);
    system.stop().await;
    eprintln!("{test} took {:?}", started.elapsed());
}

/// The browser's answer, or a panic that says what the browser was doing.
#[track_caller]
fn ok<T>(result: Result<T, BrowserError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// An operator's JWT: a user token (HS256, the development setup's secret)
/// with the operator claim.
fn operator_jwt(subject: &str) -> String {
    let claims = json!({
        "sub": subject,
        "role": "berth-operator",
        "exp": chrono::Utc::now().timestamp() + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The console's errors since the last look must be none.
async fn assert_quiet_console(browser: &Browser, page: &str) {
    let errors = ok(browser.console_errors().await);
    assert!(
        errors.is_empty(),
        "{page} logged console errors: {errors:?}"
    );
}

/// The console's errors until they include what is `wanted` (at most
/// LIVE_DEADLINE): Chromium reports them to chromedriver as they happen.
async fn console_errors_until(
    browser: &Browser,
    wanted: &str,
    complete: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + LIVE_DEADLINE;
    let mut seen = vec![];
    loop {
        seen.extend(ok(browser.console_errors().await));
        if complete(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{wanted} did not reach the console log within {LIVE_DEADLINE:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_fleet_data(what: &str, text: &str, fleet_words: &[&str]) {
    for word in fleet_words {
        assert!(
            !text.contains(word),
            "{what} shows fleet data ({word:?}): {text:?}"
        );
    }
}

/// Every dashboard page and event stream.
fn ui_routes() -> Vec<&'static str> {
    vec![
        "/ui/",
        "/ui/hosts",
        "/ui/sessions",
        "/ui/audit",
        "/ui/app.js",
        "/ui/events?page=overview",
        "/ui/events?page=hosts",
        "/ui/events?page=sessions",
        "/ui/events?page=audit",
    ]
}

/// Every operator action, on a real host, session and region, and the
/// operator API's views.
fn action_routes(host: &str, session: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::POST,
            format!("/v1/operator/hosts/{host}/drain"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/operator/sessions/{session}/end"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/operator/regions/{REGION}"),
            Some(json!({"enabled": false, "target_free_slots": 0})),
        ),
        (
            Method::POST,
            format!("/v1/operator/regions/{REGION}/deploy"),
            Some(json!({"image_id": "ami-22222222"})),
        ),
        (
            Method::POST,
            format!("/v1/operator/regions/{REGION}/deploy/release"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/operator/regions/{REGION}/deploy/abort"),
            None,
        ),
        (Method::GET, "/v1/operator/hosts".to_owned(), None),
        (Method::GET, "/v1/operator/sessions".to_owned(), None),
        (Method::GET, "/v1/operator/audit".to_owned(), None),
        (Method::GET, "/v1/operator/history".to_owned(), None),
    ]
}

enum Credential<'a> {
    Bearer(&'a str),
    /// A `berth-operator` login cookie, sent as the dashboard's script would.
    Cookie(&'a str),
}

/// One request outside the browser: its status and JSON body (null if none).
async fn call(
    method: Method,
    url: &str,
    credential: Credential<'_>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    request = match credential {
        Credential::Bearer(token) => request.bearer_auth(token),
        Credential::Cookie(value) => request
            .header("cookie", format!("berth-operator={value}"))
            .header("x-requested-with", "berth-ui"),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
