//! Scaling-service benchmark (run by scripts/bench; not a test), on this
//! machine's PostgreSQL and the moto EC2 emulator:
//!  * assign throughput and latency under concurrency, against the round-trip
//!    rate of `SELECT 1` on the same pool measured in the same run;
//!  * deficit → first RunInstances call: a region's target is raised and the
//!    running service's controller, woken by the `config` NOTIFY, calls the provider.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_common::tls;
use berth_testing::TestDb;
use clap::Parser;
use futures_util::future::BoxFuture;
use scaling_service::assign::AssignRequest;
use scaling_service::config::Cli;
use scaling_service::policy::BufferPolicy;
use scaling_service::provider::aws::AwsProvider;
use scaling_service::provider::{
    CloudInstance, LaunchRequest, LaunchedInstance, Provider, ProviderError,
};
use scaling_service::scaler::Scaler;
use scaling_service::service;

const HOSTS: i32 = 100;
const SLOTS_PER_HOST: i32 = 50;
fn concurrency() -> usize {
    std::env::var("BERTH_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}
const ASSIGNS: usize = 4000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Records when launch() is first called.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Provider>,
    first_launch: Mutex<Option<Instant>>,
}

impl Provider for Recording {
    fn launch<'a>(
        &'a self,
        r: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Vec<LaunchedInstance>, ProviderError>> {
        self.first_launch
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        self.inner.launch(r)
    }
    fn terminate<'a>(
        &'a self,
        region: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.inner.terminate(region, ids)
    }
    fn describe<'a>(
        &'a self,
        region: &'a str,
        env: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudInstance>, ProviderError>> {
        self.inner.describe(region, env)
    }
}

/// The fleet the assigns run against: the tests' warm hosts, and a user
/// limit no benchmark user reaches.
async fn seed(db: &TestDb) {
    support::warm_hosts(db, HOSTS, SLOTS_PER_HOST).await;
    sqlx::query("UPDATE limits SET max_sessions = 1000 WHERE user_id = '*'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
}

async fn rate<F, Fut>(n: usize, op: F) -> (f64, Vec<f64>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency())
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = vec![];
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return lat;
                    }
                    let t = Instant::now();
                    op(i).await;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            })
        })
        .collect();
    let mut all = vec![];
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    (per_s, all)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tls::install_crypto_provider();
    let db = TestDb::new().await;
    seed(&db).await;
    let pool = berth_common::db::connect(&db.url, "bench", concurrency() as u32)
        .await
        .unwrap();
    println!("== scaling-service benchmark ({HOSTS} hosts x {SLOTS_PER_HOST} slots, {} concurrent clients) ==", concurrency());

    let p = pool.clone();
    let (base_rate, _) = rate(ASSIGNS, move |_| {
        let p = p.clone();
        async move {
            sqlx::query("SELECT 1").execute(&p).await.unwrap();
        }
    })
    .await;
    println!(
        "{:<44} {base_rate:>8.0}/s",
        "baseline: SELECT 1 round trips"
    );

    // Through the service's own assign path: admission control and deadline.
    let argv = [
        "scaling-service",
        "--database-url",
        &db.url,
        "--auth-hs256-secret",
        "bench-secret-bench-secret-bench-secret!!",
    ];
    let config = Cli::try_parse_from(argv).unwrap().config;
    let admitted = config.assign_concurrency;
    let auth = scaling_service::auth::Authenticator::from_config(&config).unwrap();
    let provider = Arc::new(AwsProvider::new(None).await);
    let scaler = Arc::new(Scaler::new(
        config,
        pool.clone(),
        provider,
        Arc::new(BufferPolicy),
        auth,
        Arc::new(
            scaling_service::keys::ControlKeys::load_or_create(&pool)
                .await
                .unwrap(),
        ),
    ));
    let (assign_rate, lat) = rate(ASSIGNS, move |i| {
        let scaler = scaler.clone();
        async move {
            let req = AssignRequest {
                runtime: "desktop".into(),
                regions: vec!["us-east-1".into()],
                client_commit: "sha-1".into(),
                client_session_id: None,
            };
            scaler
                .assign(&format!("user-{}", i % 2000), &req)
                .await
                .expect("within the deadline")
                .expect("assign");
        }
    })
    .await;
    println!(
        "{:<44} {assign_rate:>8.0}/s  p50 {:.2} ms  p99 {:.2} ms  ({:.1}% of baseline; {admitted} in flight; target >= 2000/s)",
        "assign (POST /sessions path)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        100.0 * assign_rate / base_rate
    );
    let allocated: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE status = 'ALLOCATED'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        allocated as usize, ASSIGNS,
        "every assign allocated exactly one session"
    );

    // Deficit → first RunInstances, through the running service.
    let mut latencies = vec![];
    for run in 0..5 {
        let db = TestDb::new().await;
        seed_region_only(&db).await;
        let env = format!("dev-bench{}{run}", std::process::id());
        let argv = [
            "scaling-service",
            "--database-url",
            &db.url,
            "--env",
            &env,
            "--port",
            "0",
            "--listen-ip",
            "127.0.0.1",
            "--auth-hs256-secret",
            "bench-secret-bench-secret-bench-secret!!",
            "--tick-secs",
            "30",
            "--ec2-endpoint",
            &std::env::var("BERTH_EC2_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".into()),
        ];
        let config = Cli::try_parse_from(argv).unwrap().config;
        let recording = Arc::new(Recording {
            inner: Arc::new(AwsProvider::new(config.ec2_endpoint.clone()).await),
            first_launch: Mutex::new(None),
        });
        let svc = service::start_with_provider(config, recording.clone())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await; // controllers up and idle
        let raised = Instant::now();
        sqlx::query("UPDATE regions SET target_free_slots = 2")
            .execute(&db.pool)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let latency = loop {
            if let Some(at) = *recording.first_launch.lock().unwrap() {
                break at.saturating_duration_since(raised);
            }
            assert!(
                Instant::now() < deadline,
                "no RunInstances within 10 s of the deficit"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies.push(latency.as_secs_f64() * 1e3);
        svc.stop().await;
        db.drop_database().await;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{:<44} p50 {:.1} ms  max {:.1} ms  (n=5, tick 30 s: the NOTIFY wakes it; target <= 1000 ms)",
        "deficit -> first RunInstances call",
        percentile(&latencies, 0.5),
        latencies[latencies.len() - 1]
    );
    pool.close().await;
    db.drop_database().await;
}

async fn seed_region_only(db: &TestDb) {
    for sql in [
        "INSERT INTO instance_types (name, vcpus, memory_mib, capacity) VALUES ('t3.large', 2, 8192, 2)",
        "INSERT INTO regions (name, target_free_slots, max_hosts, instance_types) VALUES ('us-east-1', 0, 10, ARRAY['t3.large'])",
        "INSERT INTO images (region, image_id, client_sha, status) VALUES ('us-east-1', 'ami-11111111', 'sha-1', 'CURRENT')",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
}
