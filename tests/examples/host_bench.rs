//! Host-service benchmark (run by scripts/bench; not a test). On the real
//! Docker engine and PostgreSQL of this machine it measures, in one run:
//!  * cold spin-up through the daemon (resources, dirs, create+start, inspect,
//!    WAITING row) against raw Docker create+start of the same image;
//!  * warm allocation → RUNNING latency (claim, config.json, readiness, RUNNING),
//!    as the client sees json_transport;
//!  * the session proxy: request latency and streaming throughput through
//!    the host's HTTPS port against the same requests sent straight to the
//!    container;
//!  * the daemon's idle RSS as a process with a warm pool.

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_common::auth::new_session_token;
use berth_common::{db, tls, HostId};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use clap::Parser;
use host_service::config::Cli;
use host_service::daemon;
use host_service::isolation;
use host_service::session::spawn::spawn_warm;
use host_service::session::teardown::{teardown, Ending};

/// The host tests' harness: a test database with its control plane.
#[path = "../tests/host_support/mod.rs"]
mod support;
use support::TestDb;

const COLD_RUNS: usize = 12;
const WARM_RUNS: usize = 40;
const FRESH_RUNS: usize = 15;
const PROXY_RUNS: usize = 200;
const STREAM_BYTES: usize = 64 * 1024 * 1024;

fn image() -> String {
    std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth-test-app:1".to_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
    println!(
        "{name:<44} n={:<3} p50 {p50:>7.1} ms   p99 {p99:>7.1} ms",
        ms.len()
    );
    (p50, p99)
}

/// `bench`: one published port, like the cold baseline's comparison has
/// always used; `bench-web`: also the helper app's port, for the proxy.
async fn add_runtime(db: &TestDb) {
    for (name, ports) in [
        ("bench", r#"[{"container_port": 8080, "protocol": "tcp"}]"#),
        (
            "bench-web",
            r#"[{"container_port": 8080, "protocol": "tcp"}, {"container_port": 8081, "protocol": "tcp"}]"#,
        ),
    ] {
        sqlx::query(
            "INSERT INTO runtimes (name, image, ports, memory_mib, needs_tty, readiness) VALUES ($1, $2, \
             $3::jsonb, 64, true, '{\"http\": {\"port\": 8080, \"path\": \"/ready\"}}')",
        )
        .bind(name)
        .bind(image())
        .bind(ports)
        .execute(&db.pool)
        .await
        .expect("runtime row");
    }
}

async fn args(
    db: &TestDb,
    host_id: &str,
    runtime: &str,
    capacity: u16,
    state: &std::path::Path,
) -> Vec<String> {
    let token = db.host_token(host_id, capacity).await;
    let state = state.join(host_id);
    [
        "host-service",
        "--control-url",
        &db.control_url,
        "--host-token",
        &token,
        "--local",
        "--local-host-id",
        host_id,
        "--local-capacity",
        &capacity.to_string(),
        "--state-dir",
        &state.display().to_string(),
        "--api-addr",
        "127.0.0.1:0",
        "--port-range",
        "26000-26999",
        "--publish-ip",
        "127.0.0.1",
        "--runtime",
        runtime,
        "--stop-grace-secs",
        "1",
        "--uinput",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Raw create+start of the test image on `network` (None: Docker's default bridge).
async fn raw_docker_create_start(docker: &bollard::Docker, network: &str) -> f64 {
    let name = format!("berth-bench-raw-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let body = ContainerCreateBody {
        image: Some(image()),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(network.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
        .expect("create");
    docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .expect("start");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    ms
}

/// What the scaler's assign does, for one host: waits for a warm session,
/// marks it ALLOCATED with a fresh token and takes its slot.
async fn allocate_warm(
    db: &TestDb,
    host: &HostId,
) -> (uuid::Uuid, berth_common::auth::NewSessionToken) {
    let id: uuid::Uuid = loop {
        let waiting: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE host_id = $1 AND status = 'WAITING' LIMIT 1",
        )
        .bind(host.to_string())
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(id) = waiting {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let token = new_session_token();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE sessions SET status = 'ALLOCATED', user_id = 'bench', token_sha256 = $2, allocated_at = now() WHERE id = $1")
        .bind(id)
        .bind(&token.sha256_hex)
        .execute(&mut *tx)
        .await
        .unwrap();
    db::take_free_slot(&mut *tx, host).await.unwrap();
    tx.commit().await.unwrap();
    (id, token)
}

fn pinned_client(cert_sha256: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls::pinned_client_config(cert_sha256).unwrap())
        .build()
        .unwrap()
}

/// json_transport as berth-client sends it: the first request of a new
/// pinned client, so it pays the TCP connect and TLS handshake too. Each
/// round also times building that client and GET /healthz on a new and on a
/// warm connection (their difference is the connection setup), and the TCP
/// connect and the TLS handshake alone, without reqwest.
async fn fresh_connection_bench(db: &TestDb, d: &daemon::Daemon, host: &HostId) {
    let base = format!("https://127.0.0.1:{}", d.api_addr.port());
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        tls::pinned_client_config(&d.cert_sha256).unwrap(),
    ));
    let name = rustls::pki_types::ServerName::from(d.api_addr.ip());
    let (mut build, mut fresh, mut warm, mut setup, mut transport) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut tcp_ms, mut tls_ms) = (vec![], vec![]);
    for _ in 0..FRESH_RUNS {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(d.api_addr).await.unwrap();
        tcp_ms.push(ms(started));
        let started = Instant::now();
        let tls = connector.connect(name.clone(), tcp).await.unwrap();
        tls_ms.push(ms(started));
        drop(tls);

        let started = Instant::now();
        let probe = pinned_client(&d.cert_sha256);
        build.push(ms(started));
        let started = Instant::now();
        let r = probe.get(format!("{base}/healthz")).send().await.unwrap();
        r.bytes().await.unwrap();
        let first = ms(started);
        let started = Instant::now();
        let r = probe.get(format!("{base}/healthz")).send().await.unwrap();
        r.bytes().await.unwrap();
        let again = ms(started);
        fresh.push(first);
        warm.push(again);
        setup.push(first - again);

        let (id, token) = allocate_warm(db, host).await;
        let client = pinned_client(&d.cert_sha256);
        let body = serde_json::json!({"session_id": id, "json_data": "{\"bench\": true}"});
        let started = Instant::now();
        let response = client
            .put(format!("{base}/json_transport"))
            .bearer_auth(&token.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        transport.push(ms(started));
        assert_eq!(response.status(), 200);
        client
            .delete(format!("{base}/sessions/{id}"))
            .bearer_auth(&token.token)
            .send()
            .await
            .unwrap();
    }
    summary("new pinned client (build only)", build);
    summary("GET /healthz on a new connection", fresh);
    summary("GET /healthz on a warm connection", warm);
    summary("  difference: TCP connect + TLS handshake", setup);
    summary("TCP connect alone", tcp_ms);
    summary("TLS handshake alone (tokio-rustls, pinned)", tls_ms);
    summary("json_transport on a new connection", transport);
}

/// Allocates and finishes one session, then times the same requests through
/// the proxy and straight to the container (the baseline, same run).
async fn proxy_bench(db: &TestDb, d: &daemon::Daemon, client: &reqwest::Client, host: &HostId) {
    let (id, token) = allocate_warm(db, host).await;
    let base = format!("https://127.0.0.1:{}", d.api_addr.port());
    let body = serde_json::json!({"session_id": id, "json_data": "{}"});
    let finished = client
        .put(format!("{base}/json_transport"))
        .bearer_auth(&token.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), 200);
    let ip = d
        .host
        .session(berth_common::SessionId(id))
        .and_then(|s| s.container_ip)
        .expect("the session's container address");
    let direct = reqwest::Client::new();
    let proxied = format!("{base}/sessions/{id}/proxy/8081");
    let straight = format!("http://{ip}:8081");
    let (mut via, mut raw) = (vec![], vec![]);
    for _ in 0..PROXY_RUNS {
        let started = Instant::now();
        let r = direct
            .get(format!("{straight}/ready"))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
        raw.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let r = client
            .get(format!("{proxied}/ready"))
            .bearer_auth(&token.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        via.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (raw50, _) = summary("GET straight to the container (baseline)", raw);
    let (via50, _) = summary("GET through the HTTPS proxy", via);
    println!(
        "{:<44} {:.2}x",
        "ratio proxy / straight (p50)",
        via50 / raw50
    );
    let mb = STREAM_BYTES as f64 / 1e6;
    let started = Instant::now();
    let n = direct
        .get(format!("{straight}/stream?bytes={STREAM_BYTES}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    assert_eq!(n, STREAM_BYTES);
    let raw_mbs = mb / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let n = client
        .get(format!("{proxied}/stream?bytes={STREAM_BYTES}"))
        .bearer_auth(&token.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    assert_eq!(n, STREAM_BYTES);
    let via_mbs = mb / started.elapsed().as_secs_f64();
    println!(
        "{:<44} {raw_mbs:>7.0} MB/s",
        "stream 64 MiB straight (baseline)"
    );
    println!(
        "{:<44} {via_mbs:>7.0} MB/s  ({:.2}x of straight)",
        "stream 64 MiB through the HTTPS proxy",
        via_mbs / raw_mbs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tls::install_crypto_provider();
    let db = TestDb::new().await;
    add_runtime(&db).await;
    let state = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));

    // 1. Cold spin-up: raw Docker vs the daemon's whole warm-session path, interleaved.
    let cli = Cli::try_parse_from(args(&db, "bench-cold", "bench", 1, &state).await).unwrap();
    let d = daemon::start(cli.config).await.expect("daemon starts");
    // Let the daemon's own pool fill its one slot first, so it does not compete.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let docker = d.host.docker.client().clone();
    // Baselines: raw Docker on the sessions' own network (what the daemon's
    // overhead is measured against) and on the sealed network (what a
    // network Docker did not create by default costs a start).
    let (mut raw, mut raw_sealed, mut ours) = (vec![], vec![], vec![]);
    for _ in 0..COLD_RUNS {
        raw_sealed.push(raw_docker_create_start(&docker, isolation::SEALED.name).await);
        raw.push(raw_docker_create_start(&docker, isolation::OPEN.name).await);
        let started = Instant::now();
        let session = spawn_warm(&d.host).await.expect("spawn");
        ours.push(started.elapsed().as_secs_f64() * 1e3);
        teardown(&d.host, &session, &Ending::ended("benchmark")).await;
    }
    println!("== host-service benchmark (image {}) ==", image());
    summary("raw docker create+start, sealed network", raw_sealed);
    let (raw50, _) = summary("raw docker create+start, session network", raw);
    let (ours50, _) = summary("daemon cold spin-up (warm session ready)", ours);
    println!(
        "{:<44} {:.2}x  (target <= 1.10x)",
        "ratio daemon / raw (p50)",
        ours50 / raw50
    );
    d.stop().await;

    // 2. Warm allocation -> RUNNING, as the client sees json_transport.
    let cli = Cli::try_parse_from(args(&db, "bench-warm", "bench-web", 1, &state).await).unwrap();
    let d = daemon::start(cli.config).await.expect("daemon starts");
    let client = pinned_client(&d.cert_sha256);
    let host = HostId::parse("bench-warm").unwrap();
    let mut warm = vec![];
    for _ in 0..WARM_RUNS {
        let (id, token) = allocate_warm(&db, &host).await;
        let body = serde_json::json!({"session_id": id, "json_data": "{\"bench\": true}"});
        let started = Instant::now();
        let response = client
            .put(format!(
                "https://127.0.0.1:{}/json_transport",
                d.api_addr.port()
            ))
            .bearer_auth(&token.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(
            response.status(),
            200,
            "json_transport failed: {}",
            response.text().await.unwrap_or_default()
        );
        warm.push(ms);
        client
            .delete(format!(
                "https://127.0.0.1:{}/sessions/{id}",
                d.api_addr.port()
            ))
            .bearer_auth(&token.token)
            .send()
            .await
            .unwrap();
    }
    summary("warm allocation -> RUNNING (json_transport)", warm);
    fresh_connection_bench(&db, &d, &host).await;
    proxy_bench(&db, &d, &client, &host).await;
    d.stop().await;

    // 3. Idle RSS of the daemon process with a warm pool of 2.
    let exe = std::env::var("BERTH_HOST_SERVICE_BIN")
        .unwrap_or_else(|_| "target/debug/host-service".to_owned());
    let argv = args(&db, "bench-rss", "bench", 2, &state).await;
    let mut child = std::process::Command::new(&exe)
        .args(&argv[1..])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start host-service (set BERTH_HOST_SERVICE_BIN)");
    for _ in 0..300 {
        let warm: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions WHERE host_id = 'bench-rss' AND status = 'WAITING'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if warm == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!(
        "{:<44} {:.1} MB  (target <= 15 MB; binary: {exe})",
        "daemon idle RSS, 2 warm sessions",
        rss_kb as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();

    for host in ["bench-cold", "bench-warm", "bench-rss"] {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=berth.host={host}")])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }
    berth_testing::remove_tree(&state);
    db.drop_database().await;
}
