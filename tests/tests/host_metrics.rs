//! `/metrics` speaks both text formats: classic Prometheus text (0.0.4) by
//! default and on request — every sample under a HELP and a TYPE, counters
//! named `_total`, as `promtool check metrics` wants — and OpenMetrics when
//! the scraper prefers it, as Prometheus does.

#[path = "host_support/mod.rs"]
mod support;

use berth_testing::classic_problems;
use support::*;

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

async fn metrics(th: &TestHost, accept: Option<&str>) -> (String, String) {
    let mut req = th
        .client()
        .get(th.url("/metrics"))
        .bearer_auth(berth_testing::OPERATOR_TOKEN);
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let response = req.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_classic_text_unless_openmetrics_is_preferred() {
    let (db, th) = warm_host(1, &[]).await;
    th.host.metrics.proxy_requests.inc();
    th.host.metrics.ready_seconds.observe(0.02);

    for accept in [Some("text/plain;version=0.0.4"), None, Some("*/*")] {
        let (content_type, body) = metrics(&th, accept).await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {content_type}"
        );
        assert_eq!(classic_problems(&body), Vec::<String>::new(), "{body}");
        for line in [
            "# TYPE berth_host_proxy_requests_total counter",
            "berth_host_proxy_requests_total 1",
            "# TYPE berth_host_sessions gauge",
            "# TYPE berth_host_ready_seconds histogram",
            "berth_host_ready_seconds_count 1",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} missing:\n{body}");
        }
        assert!(!body.contains("# EOF"), "{body}");
    }

    let (content_type, body) = metrics(&th, Some(PROMETHEUS_ACCEPT)).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(
        body.contains("# TYPE berth_host_proxy_requests counter\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    // An operator surface: no token, or any token but the operator's, is refused.
    for token in [None, Some("a-session-or-user-token")] {
        let mut req = th.client().get(th.url("/metrics"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "OPERATOR_ONLY");
    }
    th.cleanup().await;
    db.drop_database().await;
}
