//! Spot capacity per region, against the moto EC2 emulator through a small
//! HTTP proxy that records every RunInstances and, when told to, refuses the
//! ones asking for spot as EC2 does when it has no spot capacity. moto lists a
//! spot instance with `InstanceLifecycle: spot` but ignores the spot options,
//! so those are read from the requests the proxy saw.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::types::{Instance, InstanceLifecycleType};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use scaling_service::controller::pass;
use scaling_service::provider::aws::AwsProvider;
use scaling_service::provider::tags;
use scaling_service::service;
use support::*;

/// What EC2 answers (HTTP 500) when it has no spot capacity for a request.
const NO_SPOT_CAPACITY: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
<Code>InsufficientInstanceCapacity</Code><Message>There is no Spot capacity available that matches \
your request.</Message></Error></Errors><RequestID>berth-test-no-spot</RequestID></Response>";

/// One RunInstances as the proxy saw it.
#[derive(Clone, Debug)]
struct RunInstances {
    params: Vec<(String, String)>,
    refused: bool,
}

impl RunInstances {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn is_spot(&self) -> bool {
        self.params
            .iter()
            .any(|(k, _)| k.starts_with("InstanceMarketOptions."))
    }
}

/// The proxy in front of moto; stops with the test.
struct Ec2Proxy {
    url: String,
    seen: Arc<Mutex<Vec<RunInstances>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ec2Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ec2Proxy {
    async fn start(refuse_spot: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<RunInstances>>> = Default::default();
        let upstream = reqwest::Client::builder().no_proxy().build().unwrap();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, upstream) = (seen.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            answer(req, refuse_spot, seen.clone(), upstream.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Self { url, seen, task }
    }

    fn run_instances(&self) -> Vec<RunInstances> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<Incoming>,
    refuse_spot: bool,
    seen: Arc<Mutex<Vec<RunInstances>>>,
    upstream: reqwest::Client,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    if params
        .iter()
        .any(|(k, v)| k == "Action" && v == "RunInstances")
    {
        let mut call = RunInstances {
            params,
            refused: false,
        };
        call.refused = refuse_spot && call.is_spot();
        let refused = call.refused;
        seen.lock().unwrap().push(call);
        if refused {
            return Ok(Response::builder()
                .status(500)
                .header("content-type", "text/xml;charset=UTF-8")
                .body(Full::new(Bytes::from_static(NO_SPOT_CAPACITY.as_bytes())))
                .unwrap());
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = upstream.request(parts.method, format!("{}{path}", moto_endpoint()));
    for (name, value) in &parts.headers {
        if ![http::header::HOST, http::header::CONTENT_LENGTH].contains(name) {
            forward = forward.header(name, value);
        }
    }
    let response = match forward.body(body).send().await {
        Ok(moto) => {
            let mut response = Response::builder().status(moto.status());
            if let Some(kind) = moto.headers().get(http::header::CONTENT_TYPE) {
                response = response.header(http::header::CONTENT_TYPE, kind);
            }
            let body = moto.bytes().await.unwrap_or_default();
            response.body(Full::new(body)).unwrap()
        }
        Err(error) => Response::builder()
            .status(502)
            .body(Full::new(Bytes::from(format!("moto: {error}"))))
            .unwrap(),
    };
    Ok(response)
}

/// The region of `support::region` (2 hosts' worth of free slots wanted,
/// types t3.large then t3.xlarge) bought as `purchase`.
async fn region_buying(db: &TestDb, purchase: &str) {
    region(db, 4, 10, 2).await;
    sqlx::query("UPDATE regions SET purchase = $1")
        .bind(purchase)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// The emulator's own view of `env`'s instances, read past the proxy.
async fn moto_instances(env: &str) -> Vec<Instance> {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_endpoint())
        .region(aws_config::Region::new(REGION))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", tags::ENVIRONMENT))
                .values(env)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect()
}

fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

async fn launches(db: &TestDb) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT state::text, error FROM launches")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_region_launches_one_time_spot_instances_terminated_on_interruption() {
    let db = TestDb::new().await;
    region_buying(&db, "spot").await;
    let env = env_name();
    let proxy = Ec2Proxy::start(false).await;
    let provider = Arc::new(AwsProvider::new(Some(proxy.url.clone())).await);
    let scaler = scaler(&db, &env, provider, &[]).await;
    pass(&scaler, REGION).await.unwrap();

    assert_eq!(launches(&db).await, vec![("LAUNCHED".to_owned(), None)]);
    let rows: Vec<String> = host_statuses(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(rows.len(), 2, "2 hosts for 4 slots at 2 per host");
    let instances = moto_instances(&env).await;
    assert_eq!(instances.len(), 2, "{instances:?}");
    for instance in &instances {
        assert!(rows
            .iter()
            .any(|id| Some(id.as_str()) == instance.instance_id()));
        assert_eq!(
            instance.instance_lifecycle(),
            Some(&InstanceLifecycleType::Spot),
            "EC2 lists the instance as spot"
        );
        assert_eq!(tag(instance, tags::PURCHASE), Some("spot"));
        assert_eq!(
            instance.instance_type().map(|t| t.as_str()),
            Some("t3.large")
        );
    }
    let calls = proxy.run_instances();
    assert_eq!(calls.len(), 1, "one RunInstances for the launch: {calls:?}");
    let call = &calls[0];
    assert_eq!(call.param("InstanceMarketOptions.MarketType"), Some("spot"));
    assert_eq!(
        call.param("InstanceMarketOptions.SpotOptions.SpotInstanceType"),
        Some("one-time")
    );
    assert_eq!(
        call.param("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"),
        Some("terminate")
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_with_fallback_launches_the_preferred_type_on_demand_when_spot_is_refused() {
    let db = TestDb::new().await;
    region_buying(&db, "spot_with_fallback").await;
    let env = env_name();
    let proxy = Ec2Proxy::start(true).await;
    let provider = Arc::new(AwsProvider::new(Some(proxy.url.clone())).await);
    let scaler = scaler(&db, &env, provider, &[]).await;
    pass(&scaler, REGION).await.unwrap();

    assert_eq!(launches(&db).await, vec![("LAUNCHED".to_owned(), None)]);
    let rows: Vec<String> = host_statuses(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(rows.len(), 2, "the region still gets its hosts");
    let instances = moto_instances(&env).await;
    assert_eq!(instances.len(), 2, "{instances:?}");
    for instance in &instances {
        assert!(rows
            .iter()
            .any(|id| Some(id.as_str()) == instance.instance_id()));
        assert_eq!(
            instance.instance_lifecycle(),
            None,
            "on-demand: {instance:?}"
        );
        assert_eq!(tag(instance, tags::PURCHASE), Some("on_demand"));
        // The spot refusal did not count as t3.large having no capacity.
        assert_eq!(
            instance.instance_type().map(|t| t.as_str()),
            Some("t3.large")
        );
    }
    let calls = proxy.run_instances();
    let (spot, on_demand): (Vec<_>, Vec<_>) = calls.iter().partition(|c| c.is_spot());
    assert!(!spot.is_empty(), "spot was asked first: {calls:?}");
    assert!(spot.iter().all(|c| c.refused), "{calls:?}");
    assert_eq!(on_demand.len(), 1, "then on-demand once: {calls:?}");
    assert!(
        calls.last().is_some_and(|c| !c.is_spot()),
        "on-demand after spot: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.param("InstanceType") == Some("t3.large")),
        "the same request, never the next type: {calls:?}"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_region_whose_spot_is_refused_launches_nothing_and_records_the_failure() {
    let db = TestDb::new().await;
    region_buying(&db, "spot").await;
    let env = env_name();
    let proxy = Ec2Proxy::start(true).await;
    let provider = Arc::new(AwsProvider::new(Some(proxy.url.clone())).await);
    let scaler = scaler(&db, &env, provider, &[]).await;
    pass(&scaler, REGION).await.unwrap();

    let launches = launches(&db).await;
    assert_eq!(launches.len(), 1, "{launches:?}");
    let (state, error) = &launches[0];
    assert_eq!(state, "FAILED");
    let error = error.as_deref().unwrap_or_default();
    for expected in [
        "t3.large spot",
        "t3.xlarge spot",
        "InsufficientInstanceCapacity",
    ] {
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
    assert!(host_statuses(&db).await.is_empty(), "no host rows");
    assert!(moto_instances(&env).await.is_empty(), "no instance in EC2");
    let calls = proxy.run_instances();
    assert!(!calls.is_empty());
    assert!(
        calls.iter().all(|c| c.is_spot() && c.refused),
        "never on-demand: {calls:?}"
    );
    assert_eq!(scaler.metrics.launch_failures.get(), 1);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_regions_shows_how_each_region_buys_its_hosts() {
    let db = TestDb::new().await;
    // No launches: nothing wanted, nothing allowed.
    region(&db, 0, 0, 2).await;
    sqlx::query("INSERT INTO regions (name, enabled, purchase) VALUES ('eu-west-1', false, 'spot_with_fallback')")
        .execute(&db.pool)
        .await
        .unwrap();
    let refused = sqlx::query("UPDATE regions SET purchase = 'reserved'")
        .execute(&db.pool)
        .await;
    assert!(refused.is_err(), "the database refuses unknown purchases");
    let env = env_name();
    let svc = service::start_with_provider(config(&db, &env, &[]), aws().await)
        .await
        .unwrap();
    let body: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/regions", svc.addr))
        .bearer_auth(berth_testing::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let purchases: Vec<(&str, &str)> = body["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default(),
                r["purchase"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        purchases,
        vec![("eu-west-1", "spot_with_fallback"), (REGION, "on_demand")],
        "{body}"
    );
    svc.stop().await;
    db.drop_database().await;
}
