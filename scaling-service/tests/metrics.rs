//! `/metrics` speaks both text formats: classic Prometheus text (0.0.4) by
//! default and on request — every sample under a HELP and a TYPE, counters
//! named `_total`, as `promtool check metrics` wants — and OpenMetrics when
//! the scraper prefers it, as Prometheus does.

mod support;

use berth_testing::classic_problems;
use scaling_service::service;
use support::*;

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

async fn metrics(url: &str, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new()
        .get(url)
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
    let db = TestDb::new().await;
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    svc.scaler.metrics.assigns.inc();
    svc.scaler.metrics.assign_seconds.observe(0.002);
    let url = format!("http://{}/metrics", svc.addr);

    for accept in [Some("text/plain;version=0.0.4"), None, Some("*/*")] {
        let (content_type, body) = metrics(&url, accept).await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {content_type}"
        );
        assert_eq!(classic_problems(&body), Vec::<String>::new(), "{body}");
        for line in [
            "# HELP berth_scaler_assigns_total Sessions assigned.",
            "# TYPE berth_scaler_assigns_total counter",
            "berth_scaler_assigns_total 1",
            "# TYPE berth_scaler_assign_seconds histogram",
            "berth_scaler_assign_seconds_count 1",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} missing:\n{body}");
        }
        assert!(!body.contains("# EOF"), "{body}");
    }

    let (content_type, body) = metrics(&url, Some(PROMETHEUS_ACCEPT)).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(
        body.contains("# TYPE berth_scaler_assigns counter\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    svc.stop().await;
    db.drop_database().await;
}
