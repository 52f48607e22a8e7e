//! Fleet simulator benchmark (run by `scripts/bench fleet`; not a test): the
//! release `scaling-service` binary as a child process on a fresh database,
//! and N simulated hosts of 10 slots in this process speaking the real host
//! API over HTTP — register, a watch stream each, jittered heartbeats, warm
//! sessions, claim and running on every allocation — while real assigns go
//! through the public `POST /sessions`. For each N it prints assign latency
//! at an offered rate (open loop: users arrive on a schedule whatever the
//! answers do, as independent users would; after a second's warm-up that is
//! not measured), the most assigns per second
//! (closed loop), allocation → host notified, PostgreSQL connections and memory,
//! the control plane's RSS and the region controller's passes, next to a
//! `SELECT 1` round trip on the same PostgreSQL measured in the same run.
//!
//! Settings (environment): BERTH_SCALING_SERVICE_BIN (the binary, required),
//! BERTH_FLEET_SIZES (default "250,1000,5000"), BERTH_FLEET_ASSIGN_RATE (the
//! open loop's offered assigns per second, default 1000),
//! BERTH_FLEET_ASSIGN_CONCURRENCY (the closed loop's clients, default 32). `--json` prints one JSON object per N on stdout and nothing
//! else; progress goes to stderr.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use berth_common::host_api::{
    Heartbeat, RegisterRequest, RegisterResponse, Running, WarmSession, WatchEvent,
};
use berth_common::{HostId, SessionId, SessionStatus};
use berth_testing::{closed_port, KillOnDrop, TestDb};
use futures_util::StreamExt;
use scaling_service::host_api::identity::{issue_for_host, HandStartedHost};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

const SLOTS_PER_HOST: i32 = 10;
const REGION: &str = "sim-1";
const IMAGE: &str = "sim-image";
const INSTANCE_TYPE: &str = "sim.10";
const RUNTIME: &str = "desktop";
const SECRET: &str = "fleet-bench-secret-fleet-bench-secret!!";
const OPERATOR_TOKEN: &str = "fleet-bench-operator-token-0123456789";
/// Hosts registering (and warming their sessions) at once.
const SETUP_CONCURRENCY: usize = 64;
/// What host-service uses: a host that misses 3 is UNREACHABLE.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// Three of the control plane's 15 s keep-alives missed: reconnect.
const WATCH_SILENCE: Duration = Duration::from_secs(45);
/// Assigns before the measured phases, at the offered rate, this long at
/// most (a tenth of the warm budget at most).
const WARM_UP: Duration = Duration::from_secs(1);
/// The open-loop phase's length at most (half the warm budget at most).
const OPEN_LOOP_WINDOW: Duration = Duration::from_secs(8);
/// Assigns in the closed-loop phase at most (~10 s at the rates seen here).
const CLOSED_LOOP_MAX: usize = 12_000;
/// Assigns take at most this share of the fleet's warm sessions, so the load
/// never meets an empty fleet (NO_CAPACITY would measure something else).
const WARM_SHARE: f64 = 0.8;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

/// One N's figures; the JSON keys are the field names.
#[derive(Debug, serde::Serialize)]
struct Row {
    hosts: usize,
    pg_connections: i64,
    pg_memory_mb: f64,
    cp_rss_mb: f64,
    /// The open-loop phase: assigns offered and answered per second, and
    /// their latency from each one's arrival.
    offered_per_s: f64,
    open_loop_per_s: f64,
    assign_p50_ms: f64,
    assign_p99_ms: f64,
    /// The closed-loop phase: the most assigns per second, and their p99.
    assigns_per_s: f64,
    saturated_p99_ms: f64,
    notify_p50_ms: f64,
    notify_p99_ms: f64,
    pass_ms: f64,
    passes_per_s: f64,
    #[serde(skip)]
    extra: Extra,
}

/// Printed in the table, not in the JSON.
#[derive(Debug, Default)]
struct Extra {
    select1_p50_ms: f64,
    cp_pg_connections: i64,
    assigns: usize,
    passes: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    berth_common::tls::install_crypto_provider();
    let as_json = std::env::args().skip(1).any(|a| a == "--json");
    let binary = PathBuf::from(std::env::var("BERTH_SCALING_SERVICE_BIN").context(
        "BERTH_SCALING_SERVICE_BIN must name the scaling-service binary (scripts/bench fleet sets it)",
    )?);
    ensure!(
        binary.is_file(),
        "BERTH_SCALING_SERVICE_BIN={} is not a file; build it with cargo build --release -p scaling-service",
        binary.display()
    );
    let sizes: Vec<usize> = std::env::var("BERTH_FLEET_SIZES")
        .unwrap_or_else(|_| "250,1000,5000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("BERTH_FLEET_SIZES: {s:?} is not a host count"))
        })
        .collect::<anyhow::Result<_>>()?;
    let concurrency: usize = env_or("BERTH_FLEET_ASSIGN_CONCURRENCY", 32)?;
    let rate: f64 = env_or("BERTH_FLEET_ASSIGN_RATE", 1000.0)?;
    ensure!(
        rate.is_finite() && rate > 0.0,
        "BERTH_FLEET_ASSIGN_RATE={rate} must be a positive number of assigns per second"
    );
    if !as_json {
        println!("== fleet benchmark (real control plane, simulated hosts x {SLOTS_PER_HOST} slots; assigns offered at {rate}/s, then {concurrency} closed-loop clients) ==");
        println!(
            "{:>6} {:>9} {:>11} {:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "hosts",
            "select1",
            "pg conns",
            "pg MB",
            "cp MB",
            "offered/s",
            "asg p50",
            "asg p99",
            "assigns/s",
            "sat p99",
            "ntf p50",
            "ntf p99",
            "pass ms",
            "passes/s"
        );
    }
    for &n in &sizes {
        let row = measure(&binary, n, rate, concurrency).await?;
        if as_json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            let e = &row.extra;
            println!(
                "{:>6} {:>7.2}ms {:>5}/{:<5} {:>8.0} {:>7.0} {:>4.0}/{:<4.0} {:>6.2}ms {:>6.2}ms {:>9.0} {:>6.1}ms {:>6.1}ms {:>6.1}ms {:>8.1} {:>9.1}",
                row.hosts,
                e.select1_p50_ms,
                row.pg_connections,
                e.cp_pg_connections,
                row.pg_memory_mb,
                row.cp_rss_mb,
                row.offered_per_s,
                row.open_loop_per_s,
                row.assign_p50_ms,
                row.assign_p99_ms,
                row.assigns_per_s,
                row.saturated_p99_ms,
                row.notify_p50_ms,
                row.notify_p99_ms,
                row.pass_ms,
                row.passes_per_s,
            );
        }
        eprintln!(
            "fleet {n}: {} assigns, {:.0} controller passes in the load window",
            row.extra.assigns, row.extra.passes
        );
    }
    if !as_json {
        println!("select1: SELECT 1 round trip p50 on one connection (baseline). pg conns: backends on the test database during the load, max sampled (all / the control plane's).");
        println!("pg MB: PSS of the postmaster, its auxiliary processes and this database's backends (shared buffers counted once). cp MB: the control plane's VmRSS, max sampled.");
        println!("offered/s: the open loop's assigns offered / answered per second; asg p50/p99: their latency from each one's arrival (POST /sessions over HTTP), after a 1 s warm-up. assigns/s: the closed loop's rate, sat p99 its latency.");
        println!("ntf: assign answer received -> ALLOCATED event at the host (0 if it came first). pass ms: mean controller pass in the window (berth_scaler_controller_pass_seconds).");
        println!("targets: pg conns <= 50; at 5000 hosts assign p99 <= 20 ms with 1000/s offered, and assigns/s >= 1000; notify p99 <= 100 ms; pass <= 100 ms");
    }
    Ok(())
}

/// One N on its own database and control plane, cleaned up whatever happens.
async fn measure(binary: &Path, n: usize, rate: f64, concurrency: usize) -> anyhow::Result<Row> {
    let db = TestDb::new().await;
    let scratch = std::env::temp_dir().join(format!("berth-fleet-{}-{n}", std::process::id()));
    let result = match std::fs::create_dir_all(&scratch) {
        Ok(()) => measure_on(&db, &scratch, binary, n, rate, concurrency).await,
        Err(e) => Err(anyhow::anyhow!("creating {}: {e}", scratch.display())),
    };
    // The control plane and the hosts are gone by now (dropped with measure_on).
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn seed(db: &TestDb, n: usize) -> anyhow::Result<()> {
    // target_free_slots 0: the simulated fleet always meets the buffer, so
    // the controller never launches; max_hosts = N caps it anyway; a day of
    // scale-down grace keeps it from draining idle simulated hosts.
    for sql in [
        format!("INSERT INTO instance_types (name, vcpus, memory_mib, capacity) VALUES ('{INSTANCE_TYPE}', 2, 8192, {SLOTS_PER_HOST})"),
        format!("INSERT INTO regions (name, target_free_slots, max_hosts, instance_types, scale_down_grace_s) VALUES ('{REGION}', 0, {n}, ARRAY['{INSTANCE_TYPE}'], 86400)"),
        format!("INSERT INTO images (region, image_id, client_sha, status) VALUES ('{REGION}', '{IMAGE}', '', 'CURRENT')"),
        format!("INSERT INTO runtimes (name, image) VALUES ('{RUNTIME}', 'berth-sim:1')"),
    ] {
        sqlx::query(&sql)
            .execute(&db.pool)
            .await
            .with_context(|| format!("seeding: {sql}"))?;
    }
    Ok(())
}

fn host_id(n: usize, index: usize) -> HostId {
    HostId::parse(format!("sim-{n}-{index:05}")).expect("sim-<n>-<index> is a valid host id")
}

/// `Max open files` soft limit of this process.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn measure_on(
    db: &TestDb,
    scratch: &Path,
    binary: &Path,
    n: usize,
    rate: f64,
    concurrency: usize,
) -> anyhow::Result<Row> {
    // Each host: its watch stream's connection, and a share of the pooled report connections.
    let needed = n as u64 + 1000;
    if let Some(limit) = open_files_limit() {
        ensure!(
            limit >= needed,
            "{n} hosts need about {needed} open files in this process and as many in the control plane; \
             the limit is {limit}: raise it (ulimit -n), as scripts/bench fleet does"
        );
    }
    seed(db, n).await?;
    let select1_p50_ms = select1_p50(&db.url).await?;

    let port = closed_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = scratch.join("scaling-service.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(binary);
    command
        .env("DATABASE_URL", &db.url)
        .env("PORT", port.to_string())
        .env("BERTH_LISTEN_IP", "127.0.0.1")
        // Watch streams plus the report and assign connections, with room.
        .env("BERTH_MAX_CONNECTIONS", (2 * n + 1000).to_string())
        .env("BERTH_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("BERTH_AUTH_HS256_SECRET", SECRET)
        // A dev environment: user tokens need no issuer or audience.
        .env("BERTH_ENV", format!("dev-fleet{}", std::process::id()))
        // The local provider lists nothing from an empty directory: no EC2
        // emulator in the pass, no strays, and a launch (there should be
        // none) would fail on the missing binary instead of starting anything.
        .env("BERTH_PROVIDER", "local")
        .env("BERTH_LOCAL_DIR", scratch.join("local"))
        .env("BERTH_LOCAL_HOST_BINARY", scratch.join("no-host-service"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = KillOnDrop(
        command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?,
    );
    let cp_pid = child.0.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    wait_ready(&http, &base, &log_path).await?;

    let fleet = Arc::new(Fleet {
        n,
        base: base.clone(),
        http: http.clone(),
        // One connection per stream in progress (HTTP/1.1): N connections.
        watch_http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?,
        notified: Mutex::new(HashMap::new()),
        ready: AtomicUsize::new(0),
        failures: AtomicUsize::new(0),
        first_failure: Mutex::new(None),
        reconnects: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
    });

    // Bootstrap tokens, as `scaling-service host-token` would print them.
    let started = Instant::now();
    let tokens: Vec<(usize, String)> = futures_util::stream::iter(0..n)
        .map(|index| async move {
            let host = HandStartedHost {
                id: host_id(n, index),
                region: REGION.into(),
                image_id: IMAGE.into(),
                instance_type: INSTANCE_TYPE.into(),
                capacity: SLOTS_PER_HOST,
            };
            issue_for_host(&db.pool, &host, 3600)
                .await
                .map(|token| (index, token))
                .with_context(|| format!("issuing a bootstrap token for {}", host.id))
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "fleet {n}: {n} bootstrap tokens in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let setup = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut hosts = JoinSet::new();
    for (index, token) in tokens {
        hosts.spawn(run_host(fleet.clone(), index, token, setup.clone()));
    }
    let setup_limit = Duration::from_secs(120) + Duration::from_millis(60 * n as u64);
    loop {
        let ready = fleet.ready.load(Ordering::SeqCst);
        if ready == n {
            break;
        }
        if let Some(first) = fleet
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            bail!("a simulated host failed during setup ({ready}/{n} ready): {first}");
        }
        if started.elapsed() > setup_limit {
            bail!(
                "only {ready} of {n} hosts registered, watched and warmed within {setup_limit:?}{}",
                log_tail(&log_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup_s = started.elapsed().as_secs_f64();
    let (active, waiting): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM hosts WHERE status = 'ACTIVE'), \
                (SELECT count(*) FROM sessions WHERE status = 'WAITING')",
    )
    .fetch_one(&db.pool)
    .await?;
    let streams = metric(&http, &base, "berth_scaler_host_streams").await?;
    eprintln!(
        "fleet {n}: registered, watching and warm in {setup_s:.1} s ({:.0} hosts/s): {active} ACTIVE hosts, {waiting} WAITING sessions, {streams} streams held",
        n as f64 / setup_s
    );
    ensure!(
        active == n as i64 && waiting == n as i64 * i64::from(SLOTS_PER_HOST),
        "expected {n} ACTIVE hosts and {} WAITING sessions; found {active} and {waiting}",
        n as i64 * i64::from(SLOTS_PER_HOST)
    );
    ensure!(
        streams as usize == n,
        "the control plane holds {streams} watch streams, not {n}"
    );

    // Statistics as a fleet that grew over time would have them (autovacuum
    // has not looked at tables filled seconds ago), as scaler_bench does.
    // BERTH_FLEET_ANALYZE=false measures the freshly filled tables instead.
    if env_or("BERTH_FLEET_ANALYZE", true)? {
        sqlx::query("ANALYZE").execute(&db.pool).await?;
    }

    // The load: distinct users, tokens signed beforehand. A warm-up, then
    // the open loop at the offered rate (latency), then the closed loop
    // (throughput), sharing the warm sessions the fleet has.
    let budget = (n as f64 * f64::from(SLOTS_PER_HOST) * WARM_SHARE) as usize;
    let warm_up_count = ((rate * WARM_UP.as_secs_f64()) as usize).min(budget / 10);
    let open_count =
        ((rate * OPEN_LOOP_WINDOW.as_secs_f64()) as usize).min((budget - warm_up_count) / 2);
    let closed_count = (budget - warm_up_count - open_count).min(CLOSED_LOOP_MAX);
    let count = warm_up_count + open_count + closed_count;
    let users: Vec<String> = (0..count)
        .map(|i| user_token(&format!("fleet-user-{n}-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let (warm_up_users, users) = users.split_at(warm_up_count);
    let (open_users, closed_users) = users.split_at(open_count);
    let closed_users = Arc::new(closed_users.to_vec());
    let target = AssignTarget::new(&base, concurrency.max(512))?;
    // Not measured: the generator's connections, and the control plane's
    // pooled connections' first calls (each plans the assign once).
    let warm_up = assign_open_loop(&target, warm_up_users, rate).await?;
    let sampler = Sampler::start(db.url.clone(), cp_pid);
    let passes_before = metric(&http, &base, "berth_scaler_controller_passes_total").await?;
    let pass_s_before = metric(&http, &base, "berth_scaler_controller_pass_seconds_sum").await?;
    let window = Instant::now();
    let open = assign_open_loop(&target, open_users, rate).await?;
    let open_s = window.elapsed().as_secs_f64();
    let closed_window = Instant::now();
    let closed = assign_closed_loop(&target, closed_users, concurrency).await?;
    let closed_s = closed_window.elapsed().as_secs_f64();
    let window_s = window.elapsed().as_secs_f64();
    let passes_after = metric(&http, &base, "berth_scaler_controller_passes_total").await?;
    let pass_s_after = metric(&http, &base, "berth_scaler_controller_pass_seconds_sum").await?;
    let samples = sampler.stop().await?;
    let assign_failures = target.failures();
    let failed_assigns: usize = assign_failures.values().sum();
    if failed_assigns > 0 {
        eprintln!("fleet {n}: {failed_assigns} of {count} assigns failed: {assign_failures:?}");
    }
    let latencies = |done: &[AssignDone]| {
        let mut ms: Vec<f64> = done.iter().map(|a| a.latency_ms).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        ms
    };
    let (open_ms, closed_ms) = (latencies(&open), latencies(&closed));
    let (open_per_s, closed_per_s) = (open.len() as f64 / open_s, closed.len() as f64 / closed_s);
    let assigned: Vec<AssignDone> = warm_up.into_iter().chain(open).chain(closed).collect();

    // Every allocation reaches its host (bounded wait), then claim and running.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let notified = {
            let seen = fleet.notified.lock().unwrap_or_else(|p| p.into_inner());
            assigned
                .iter()
                .filter(|a| seen.contains_key(&a.session))
                .count()
        };
        if notified == assigned.len() && fleet.running.load(Ordering::SeqCst) >= assigned.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{notified} of {} allocations reached their hosts and {} sessions went RUNNING within 15 s; {} host calls failed, first: {:?}",
                assigned.len(),
                fleet.running.load(Ordering::SeqCst),
                fleet.failures.load(Ordering::SeqCst),
                fleet.first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut notify_ms: Vec<f64> = {
        let seen = fleet.notified.lock().unwrap_or_else(|p| p.into_inner());
        // Assign answer received → ALLOCATED event read by the host; an event
        // that came before the answer counts as 0.
        assigned
            .iter()
            .filter_map(|a| {
                let event = seen.get(&a.session)?;
                Some(event.saturating_duration_since(a.answered).as_secs_f64() * 1e3)
            })
            .collect()
    };
    notify_ms.sort_by(|a, b| a.total_cmp(b));

    let (launches, running): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM launches), (SELECT count(*) FROM sessions WHERE status = 'RUNNING')",
    )
    .fetch_one(&db.pool)
    .await?;
    ensure!(
        launches == 0,
        "the controller launched {launches} times; the region should need nothing"
    );
    ensure!(
        running == assigned.len() as i64,
        "{running} RUNNING sessions after {} assigns",
        assigned.len()
    );
    let failures = fleet.failures.load(Ordering::SeqCst);
    if failures > 0 {
        eprintln!(
            "fleet {n}: {failures} host API calls failed (retried where it matters); first: {:?}",
            fleet
                .first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        );
    }
    let reconnects = fleet.reconnects.load(Ordering::SeqCst);
    if reconnects > 0 {
        eprintln!("fleet {n}: {reconnects} watch streams reconnected");
    }
    hosts.abort_all();
    while hosts.join_next().await.is_some() {}

    let passes = passes_after - passes_before;
    Ok(Row {
        hosts: n,
        pg_connections: samples.pg_connections,
        pg_memory_mb: samples.pg_pss_kb as f64 / 1024.0,
        cp_rss_mb: samples.cp_rss_kb as f64 / 1024.0,
        offered_per_s: rate,
        open_loop_per_s: open_per_s,
        assign_p50_ms: percentile(&open_ms, 0.5),
        assign_p99_ms: percentile(&open_ms, 0.99),
        assigns_per_s: closed_per_s,
        saturated_p99_ms: percentile(&closed_ms, 0.99),
        notify_p50_ms: percentile(&notify_ms, 0.5),
        notify_p99_ms: percentile(&notify_ms, 0.99),
        // The mean of the controller's own pass-duration histogram over the window.
        pass_ms: if passes > 0.0 {
            (pass_s_after - pass_s_before) * 1e3 / passes
        } else {
            f64::NAN
        },
        passes_per_s: passes / window_s,
        extra: Extra {
            select1_p50_ms,
            cp_pg_connections: samples.cp_pg_connections,
            assigns: assigned.len(),
            passes,
        },
    })
}

async fn select1_p50(url: &str) -> anyhow::Result<f64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting for the SELECT 1 baseline")?;
    let mut lat = vec![];
    for _ in 0..2000 {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&pool).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    pool.close().await;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(percentile(&lat, 0.5))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; the control plane's log ends:\n{tail}")
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, log: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the control plane did not answer /readyz at {base} within 60 s{}",
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sample's value on the control plane's /metrics (operator token).
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .context("reading /metrics")?
        .error_for_status()
        .context("reading /metrics")?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("/metrics has no {name}"))
}

fn user_token(sub: &str) -> anyhow::Result<String> {
    let claims = json!({"sub": sub, "exp": chrono::Utc::now().timestamp() + 3600});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

#[derive(Debug)]
struct AssignDone {
    session: Uuid,
    latency_ms: f64,
    answered: Instant,
}

/// What both load phases send.
#[derive(Clone)]
struct AssignTarget {
    http: reqwest::Client,
    url: Arc<str>,
    body: Arc<serde_json::Value>,
    failed: Arc<Mutex<HashMap<String, usize>>>,
}

impl AssignTarget {
    fn new(base: &str, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(connections)
                .build()?,
            url: format!("{base}/sessions").into(),
            body: json!({"runtime": RUNTIME, "regions": [REGION], "client_commit": ""}).into(),
            failed: Arc::default(),
        })
    }

    /// One `POST /sessions`; `due` is when it should have been sent, so an
    /// assign that waited for the load generator counts that wait.
    async fn assign(&self, user: &str, due: Instant) -> anyhow::Result<Option<AssignDone>> {
        let response = self
            .http
            .post(&*self.url)
            .bearer_auth(user)
            .json(&*self.body)
            .send()
            .await
            .context("POST /sessions")?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        let answered = Instant::now();
        if status != reqwest::StatusCode::CREATED {
            // Counted and reported, not retried: a timeout is a figure too.
            let code = answer["error"]["code"].as_str().unwrap_or("?");
            *self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(format!("{status} {code}"))
                .or_default() += 1;
            return Ok(None);
        }
        let session = answer["session_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the assign answer has no session_id: {answer}"))?;
        Ok(Some(AssignDone {
            session,
            latency_ms: answered.saturating_duration_since(due).as_secs_f64() * 1e3,
            answered,
        }))
    }

    fn failures(&self) -> HashMap<String, usize> {
        std::mem::take(&mut *self.failed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Open loop: `users` arrive at `rate` per second whatever the answers do,
/// as independent users would; latency runs from each one's arrival time.
/// At most `MAX_IN_FLIGHT` wait at once: beyond that the generator falls
/// behind, and the delay is counted in the latencies it causes.
async fn assign_open_loop(
    target: &AssignTarget,
    users: &[String],
    rate: f64,
) -> anyhow::Result<Vec<AssignDone>> {
    const MAX_IN_FLIGHT: usize = 512;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut sent = JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (target, user) = (target.clone(), user.clone());
        sent.spawn(async move {
            let done = target.assign(&user, due).await;
            drop(permit);
            done
        });
    }
    let mut all = vec![];
    while let Some(done) = sent.join_next().await {
        all.extend(done.context("an assign task panicked")??);
    }
    Ok(all)
}

/// Closed loop: `concurrency` clients, each sending its next assign when
/// the last is answered, until `users` run out: the most the service does.
async fn assign_closed_loop(
    target: &AssignTarget,
    users: Arc<Vec<String>>,
    concurrency: usize,
) -> anyhow::Result<Vec<AssignDone>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (target, next, users) = (target.clone(), next.clone(), users.clone());
        workers.spawn(async move {
            let mut done = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(user) = users.get(i) else {
                    return Ok::<_, anyhow::Error>(done);
                };
                let sent = Instant::now();
                done.extend(target.assign(user, sent).await?);
            }
        });
    }
    let mut all = vec![];
    while let Some(worker) = workers.join_next().await {
        all.extend(worker.context("an assign worker panicked")??);
    }
    Ok(all)
}

/// What the simulated hosts share.
#[derive(Debug)]
struct Fleet {
    n: usize,
    base: String,
    /// Reports (register, heartbeats, warm sessions, claim, running): pooled.
    http: reqwest::Client,
    /// Watch streams: each holds its own connection while it lasts.
    watch_http: reqwest::Client,
    /// When each ALLOCATED event reached its host.
    notified: Mutex<HashMap<Uuid, Instant>>,
    ready: AtomicUsize,
    failures: AtomicUsize,
    first_failure: Mutex<Option<String>>,
    reconnects: AtomicUsize,
    running: AtomicUsize,
}

impl Fleet {
    fn failed(&self, what: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(what);
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        bearer: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("POST {path} answered {status}: {text}");
        }
        response
            .json()
            .await
            .with_context(|| format!("POST {path}: reading the answer"))
    }

    /// Opens the host's watch stream and reads its first event, the snapshot.
    async fn watch(&self, credential: &str) -> anyhow::Result<Sse> {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.watch_http
                .get(format!("{}/v1/host/watch", self.base))
                .bearer_auth(credential)
                .send(),
        )
        .await
        .context("GET /v1/host/watch: no answer within 30 s")?
        .context("GET /v1/host/watch")?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("GET /v1/host/watch answered {status}: {text}");
        }
        let mut sse = Sse {
            response,
            buf: vec![],
        };
        match tokio::time::timeout(Duration::from_secs(30), sse.next()).await {
            Ok(Ok(Some(WatchEvent::Snapshot { .. }))) => Ok(sse),
            Ok(Ok(other)) => bail!("the watch stream began with {other:?}, not a snapshot"),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("no snapshot within 30 s of opening the watch stream"),
        }
    }
}

/// A server-sent event stream of [`WatchEvent`]s.
struct Sse {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    /// The next event (keep-alives skipped); `None` when the stream ended.
    async fn next(&mut self) -> anyhow::Result<Option<WatchEvent>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = std::str::from_utf8(&block).context("a watch event is not UTF-8")?;
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return serde_json::from_str(&data)
                    .map(Some)
                    .with_context(|| format!("a malformed watch event: {data}"));
            }
            match self.response.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// One simulated host: what host-service does with the host API, minus Docker.
async fn run_host(fleet: Arc<Fleet>, index: usize, token: String, setup: Arc<Semaphore>) {
    if let Err(e) = host_main(&fleet, index, token, setup).await {
        fleet.failed(format!("host {index}: {e:#}"));
    }
}

async fn host_main(
    fleet: &Arc<Fleet>,
    index: usize,
    token: String,
    setup: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let id = host_id(fleet.n, index);
    let permit = setup.acquire_owned().await?;
    let facts = RegisterRequest {
        host_id: id.clone(),
        region: REGION.into(),
        image_id: IMAGE.into(),
        instance_type: INSTANCE_TYPE.into(),
        public_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        private_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        api_port: 4678,
        cert_sha256: "a".repeat(64),
        version: "fleet-bench".into(),
        // The control plane makes the credential and answers it.
        credential_sha256: None,
        gpus: vec![],
    };
    let registered: RegisterResponse = fleet.post("/v1/host/register", &token, &facts).await?;
    let credential = registered
        .credential
        .context("registration with a bootstrap token returned no credential")?;
    let mut stream = fleet.watch(&credential).await?;
    for slot in 0..SLOTS_PER_HOST {
        let warm = WarmSession {
            id: SessionId::new(),
            runtime: RUNTIME.into(),
            container_id: format!("sim{index:05}c{slot}"),
            tty: None,
            ports: json!([]),
        };
        let _: serde_json::Value = fleet.post("/v1/host/sessions", &credential, &warm).await?;
    }
    drop(permit);
    fleet.ready.fetch_add(1, Ordering::SeqCst);

    let credential: Arc<str> = credential.into();
    // Spread over the period, as hosts started at different times would be.
    let offset = Duration::from_millis((index as u64 * 7919) % HEARTBEAT_EVERY.as_millis() as u64);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, HEARTBEAT_EVERY);
    let sessions = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            event = tokio::time::timeout(WATCH_SILENCE, stream.next()) => match event {
                Ok(Ok(Some(WatchEvent::Session(state)))) if state.status == SessionStatus::Allocated => {
                    fleet
                        .notified
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(state.id.0)
                        .or_insert_with(Instant::now);
                    sessions.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(start_session(fleet.clone(), credential.clone(), state.id));
                }
                Ok(Ok(Some(_))) => {}
                ended => {
                    fleet.reconnects.fetch_add(1, Ordering::SeqCst);
                    if let Ok(Err(e)) = ended {
                        fleet.failed(format!("host {index}: the watch stream broke: {e:#}"));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match fleet.watch(&credential).await {
                        Ok(s) => stream = s,
                        Err(e) => fleet.failed(format!("host {index}: reconnecting its watch: {e:#}")),
                    }
                }
            },
            _ = beat.tick() => {
                let (fleet, credential) = (fleet.clone(), credential.clone());
                let session_count = sessions.load(Ordering::SeqCst) as i32;
                tokio::spawn(async move {
                    let beat = Heartbeat { load_average: Some(0.1), session_count };
                    if let Err(e) = fleet.post::<serde_json::Value>("/v1/host/heartbeat", &credential, &beat).await {
                        fleet.failed(format!("heartbeat: {e:#}"));
                    }
                });
            }
        }
    }
}

/// What host-service does with an allocation once its container is ready.
async fn start_session(fleet: Arc<Fleet>, credential: Arc<str>, session: SessionId) {
    let claimed: anyhow::Result<serde_json::Value> = fleet
        .post(
            &format!("/v1/host/sessions/{session}/claim"),
            &credential,
            &json!({}),
        )
        .await;
    let ran = match claimed {
        Ok(_) => {
            fleet
                .post::<serde_json::Value>(
                    &format!("/v1/host/sessions/{session}/running"),
                    &credential,
                    &Running::default(),
                )
                .await
        }
        Err(e) => Err(e),
    };
    match ran {
        Ok(_) => {
            fleet.running.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) => fleet.failed(format!("session {session}: {e:#}")),
    }
}

/// Maxima sampled during the load window.
#[derive(Debug, Default, Clone, Copy)]
struct Samples {
    pg_connections: i64,
    cp_pg_connections: i64,
    pg_pss_kb: u64,
    cp_rss_kb: u64,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Samples>>,
}

impl Sampler {
    fn start(url: String, cp_pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&url)
                .await
                .context("connecting the sampler")?;
            let mut max = Samples::default();
            let mut round = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                // This sampler's own connection is one of them.
                let (all, cp): (i64, i64) = sqlx::query_as(
                    "SELECT count(*), count(*) FILTER (WHERE application_name = 'scaling-service') \
                     FROM pg_stat_activity WHERE datname = current_database()",
                )
                .fetch_one(&pool)
                .await?;
                max.pg_connections = max.pg_connections.max(all);
                max.cp_pg_connections = max.cp_pg_connections.max(cp);
                max.cp_rss_kb = max.cp_rss_kb.max(proc_kb(cp_pid, "status", "VmRSS:"));
                if round.is_multiple_of(5) {
                    // Backends of this database, the shared background
                    // processes (no database) and their parent, the postmaster.
                    let pids: Vec<i32> = sqlx::query_scalar(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL",
                    )
                    .fetch_all(&pool)
                    .await?;
                    let mut pids: Vec<u32> = pids.into_iter().map(|p| p as u32).collect();
                    if let Some(&first) = pids.first() {
                        if let Some(parent) = parent_pid(first) {
                            pids.push(parent);
                        }
                    }
                    let pss: u64 = pids
                        .iter()
                        .map(|&p| proc_kb(p, "smaps_rollup", "Pss:"))
                        .sum();
                    max.pg_pss_kb = max.pg_pss_kb.max(pss);
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pool.close().await;
            Ok(max)
        });
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Samples> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("the sampler panicked")?
    }
}

/// A `kB` field of /proc/<pid>/<file> (0 when unreadable).
fn proc_kb(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}
