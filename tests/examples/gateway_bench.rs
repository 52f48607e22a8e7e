//! Browser gateway benchmark (run by `scripts/bench gateway`; not a test).
//! The whole system on this machine (local hosts of the release host-service,
//! Docker containers of the test app) with a release control-plane replica
//! serving the gateway, and in one run, on one session:
//!  * request latency to the app straight to its published port, through the
//!    host's proxy (pinned HTTPS, session token), and through the gateway
//!    (trusted HTTPS, login cookie → pinned HTTPS with a grant → host proxy);
//!  * streaming throughput of one large download along the same three paths.
//!
//! Each path is warmed up first and measured over kept-alive connections;
//! the driver is a release build, so client-side TLS costs what it would.

use std::time::{Duration, Instant};

use berth_tests::client::HostClient;

#[path = "../tests/support/mod.rs"]
mod support;
use support::gateway::{GatewaySystem, DOMAIN};

const RUNS: usize = 1000;
const WARM_UP: usize = 50;
const STREAM_BYTES: u64 = 512 << 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latencies(client: &reqwest::Client, url: &str, auth: &[(&str, String)]) -> (f64, f64) {
    let get = || {
        let mut request = client.get(url);
        for (name, value) in auth {
            request = request.header(*name, value);
        }
        request
    };
    for _ in 0..WARM_UP {
        let answer = get().send().await.unwrap();
        assert!(answer.status().is_success(), "{url}: {}", answer.status());
        answer.bytes().await.unwrap();
    }
    let mut ms = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        get().send().await.unwrap().bytes().await.unwrap();
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

/// MiB/s of one `STREAM_BYTES` download.
async fn throughput(client: &reqwest::Client, url: &str, auth: &[(&str, String)]) -> f64 {
    eprintln!("streaming {STREAM_BYTES} bytes from {url}");
    let mut request = client.get(format!("{url}?bytes={STREAM_BYTES}"));
    for (name, value) in auth {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let mut answer = request.send().await.unwrap();
    let mut got = 0u64;
    while let Some(chunk) = answer.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    assert_eq!(got, STREAM_BYTES);
    (got as f64 / (1 << 20) as f64) / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let host_binary = std::env::var("BERTH_HOST_SERVICE_BIN").unwrap_or_else(|_| {
        berth_testing::workspace_binary("host-service")
            .display()
            .to_string()
    });
    let scaler_binary = std::env::var("BERTH_SCALING_SERVICE_BIN").map_or_else(
        |_| berth_testing::workspace_binary("scaling-service"),
        std::path::PathBuf::from,
    );
    let gw = GatewaySystem::start_with(&["--local-host-binary", &host_binary]).await;
    let alice = gw.system.user("alice");
    let (assigned, token, _) = support::running_session(&alice, "bench").await;
    let id = assigned.session_id.clone();
    let ports: serde_json::Value = HostClient::pinned(&assigned.host)
        .unwrap()
        .status(&id, &token)
        .await
        .unwrap();
    let direct_port = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["container_port"] == 8081)
        .and_then(|p| p["host_port"].as_u64())
        .expect("the helper app's port is published");
    let (_replica, gateway) = gw.replica(&scaler_binary).await;
    let cookie = gw.log_in("alice", &id).await;

    let direct = reqwest::Client::builder().no_proxy().build().unwrap();
    let host = HostClient::pinned(&assigned.host).unwrap();
    let through_gateway = gw.client_via(&[&id], gateway);
    let direct_url = format!("http://127.0.0.1:{direct_port}");
    let proxy_url = host.url(&format!("/sessions/{id}/proxy/8081"));
    let gateway_url = format!("https://{id}.{DOMAIN}:{}", gateway.port());
    let bearer = [("authorization", format!("Bearer {token}"))];
    let with_cookie = [("cookie", cookie)];

    println!("browser gateway (release control plane and host-service; {RUNS} sequential GETs per path, kept-alive)");
    let (d50, d99) = latencies(&direct, &format!("{direct_url}/ready"), &[]).await;
    let (h50, h99) = latencies(host.raw(), &format!("{proxy_url}/ready"), &bearer).await;
    let (g50, g99) = latencies(
        &through_gateway,
        &format!("{gateway_url}/ready"),
        &with_cookie,
    )
    .await;
    println!(
        "{:<44} p50 {d50:>6.2} ms   p99 {d99:>6.2} ms",
        "app direct (baseline)"
    );
    println!(
        "{:<44} p50 {h50:>6.2} ms   p99 {h99:>6.2} ms",
        "host proxy (baseline)"
    );
    println!(
        "{:<44} p50 {g50:>6.2} ms   p99 {g99:>6.2} ms   added over host proxy: p50 {:+.2} ms, p99 {:+.2} ms (target p99 ≤ 2 ms)",
        "gateway → host proxy → app",
        g50 - h50,
        g99 - h99
    );
    let mib = STREAM_BYTES >> 20;
    let d = throughput(&direct, &format!("{direct_url}/stream"), &[]).await;
    let h = throughput(host.raw(), &format!("{proxy_url}/stream"), &bearer).await;
    let g = throughput(
        &through_gateway,
        &format!("{gateway_url}/stream"),
        &with_cookie,
    )
    .await;
    println!(
        "{:<44} {d:>7.0} MiB/s ({mib} MiB)",
        "stream: app direct (baseline)"
    );
    println!(
        "{:<44} {h:>7.0} MiB/s   {:.2}× direct",
        "stream: host proxy",
        h / d
    );
    println!(
        "{:<44} {g:>7.0} MiB/s   {:.2}× direct, {:.2}× host proxy (target ≥ 0.9× direct)",
        "stream: gateway",
        g / d,
        g / h
    );
    drop(_replica);
    tokio::time::timeout(Duration::from_secs(60), gw.stop())
        .await
        .expect("the system stops");
}
