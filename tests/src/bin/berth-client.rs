//! berth-client: a client of Berth, the way a client app uses it.
//! `berth-client demo` walks one session through its whole life, timing each step.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_tests::client::{dev_user_token, HostClient, ScalerClient};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth-client",
    version,
    about = "A small client of the Berth APIs"
)]
struct Cli {
    /// The scaling service's base URL.
    #[arg(
        long,
        env = "BERTH_SCALER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    scaler: String,
    /// Development only: mint the user's token with the scaler's HS256 secret.
    #[arg(long, env = "BERTH_AUTH_HS256_SECRET", hide_env_values = true)]
    hs256_secret: String,
    /// The user (`sub` of the token).
    #[arg(long, default_value = "demo-user")]
    user: String,
    /// `iss` of the minted token: what the scaler requires (BERTH_AUTH_ISSUER).
    #[arg(long, env = "BERTH_AUTH_ISSUER")]
    issuer: Option<String>,
    /// `aud` of the minted token: what the scaler requires (BERTH_AUTH_AUDIENCE).
    #[arg(long, env = "BERTH_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// The scaler's operator token, to watch the region's buffer (/regions).
    #[arg(long, env = "BERTH_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Request a session, configure it over pinned HTTPS, use the app, list, delete.
    Demo {
        #[arg(long, default_value = "local")]
        region: String,
        #[arg(long, default_value = "desktop")]
        runtime: String,
        /// How long to wait for the first warm host.
        #[arg(long, default_value_t = 240)]
        wait_secs: u64,
    },
}

fn step(started: Instant, what: &str) {
    println!("[{:>7.2}s] {what}", started.elapsed().as_secs_f64());
}

async fn demo(cli: &Cli, region: &str, runtime: &str, wait: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let token = dev_user_token(
        &cli.hs256_secret,
        &cli.user,
        cli.audience.as_deref(),
        cli.issuer.as_deref(),
        Duration::from_secs(3600),
    );
    let scaler = ScalerClient::new(&cli.scaler, &token);

    step(t0, "waiting for a warm session in the region");
    let deadline = Instant::now() + wait;
    loop {
        let regions = scaler
            .regions(&cli.operator_token)
            .await
            .context("asking the scaler for its regions")?;
        let listed = regions["regions"].as_array().cloned().unwrap_or_default();
        // A region the scaler does not have never gets a warm session: say so now.
        let Some(r) = listed.iter().find(|r| r["name"] == region) else {
            let known: Vec<&str> = listed.iter().filter_map(|r| r["name"].as_str()).collect();
            bail!(
                "the scaler has no region {region:?}; its regions: {}; pass one of them with --region",
                if known.is_empty() {
                    "none (insert a row into `regions` first)".to_owned()
                } else {
                    known.join(", ")
                }
            );
        };
        if r["enabled"] == false {
            bail!("region {region:?} is disabled, so it gets no hosts; enable it (regions.enabled) or pass another --region");
        }
        // Free slots are capacity; warm sessions are what an assign can take.
        let warm = r["warm_sessions"].as_i64().unwrap_or(0);
        if warm > 0 {
            step(
                t0,
                &format!(
                    "region {region}: {} hosts, {} free slots, {warm} warm sessions",
                    r["hosts"], r["free_slots"]
                ),
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("no warm session in region {region} after {wait:?}; see the scaler's and hosts' logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Timed per call: a retry's wait is not the assign's cost.
    let (assigned, took) = loop {
        let t = Instant::now();
        match scaler.assign(runtime, &[region], Some("demo-1")).await {
            Ok(a) => break (a, t.elapsed()),
            // Another client may have taken the last warm session meanwhile.
            Err(e) if e.code() == Some("NO_CAPACITY") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e).context("requesting a session"),
        }
    };
    step(
        t0,
        &format!(
            "assigned session {} on host {} ({}:{}) in {} ms; pinning certificate {}…",
            assigned.session_id,
            assigned.host.id,
            assigned.host.ip.as_deref().unwrap_or("?"),
            assigned.host.api_port.unwrap_or(0),
            took.as_millis(),
            &assigned.host.cert_sha256.as_deref().unwrap_or("")
                [..16.min(assigned.host.cert_sha256.as_deref().unwrap_or("").len())]
        ),
    );
    let session_token = assigned
        .token
        .clone()
        .context("the scaler returned no session token")?;

    let host = HostClient::pinned(&assigned.host)?;
    let t = Instant::now();
    let config = serde_json::json!({"user": cli.user, "greeting": "hello from berth-client"});
    let ports = host
        .json_transport(&assigned.session_id, &session_token, &config)
        .await
        .context("json_transport")?;
    step(
        t0,
        &format!(
            "json_transport over pinned HTTPS: app RUNNING in {} ms; ports {:?}",
            t.elapsed().as_millis(),
            ports.iter().map(|p| p.describe()).collect::<Vec<_>>()
        ),
    );

    let host_port = ports
        .iter()
        .filter(|p| p.tcp())
        .find_map(|p| p.host_port)
        .context("the session has no public TCP port to reach the app at")?;
    let ip = assigned.host.ip.as_deref().unwrap_or("127.0.0.1");
    let t = Instant::now();
    let app = reqwest::get(format!("http://{ip}:{host_port}/config.json"))
        .await?
        .text()
        .await?;
    step(
        t0,
        &format!(
            "the app answers through host port {host_port} in {} ms: {app}",
            t.elapsed().as_millis()
        ),
    );

    let listed = scaler.sessions().await?;
    for s in listed["sessions"].as_array().into_iter().flatten() {
        step(
            t0,
            &format!(
                "status: session {} is {} on {}",
                s["session_id"], s["status"], s["host"]["id"]
            ),
        );
    }

    let t = Instant::now();
    scaler
        .delete(&assigned.session_id)
        .await
        .context("deleting the session")?;
    // Torn down = the scaler reports how it ended (DELETED, …) instead of a live
    // status; a 404 (history already pruned) also means it is gone.
    let gone_by = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        match scaler.session(&assigned.session_id).await {
            Ok(s) if !is_live(&s["status"]) => break s["status"].clone(),
            Err(e) if e.status() == Some(404) => break serde_json::Value::from("gone"),
            Err(e) if e.status().is_some() => {
                return Err(e).context("asking the scaler how the session ended")
            }
            _ if Instant::now() > gone_by => {
                bail!("the session was not torn down within 60 s of its delete; see the host's log")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    step(
        t0,
        &format!(
            "session deleted and torn down in {} ms: {ended}",
            t.elapsed().as_millis()
        ),
    );
    step(t0, "done");
    Ok(())
}

/// Statuses of a session that still holds its container.
fn is_live(status: &serde_json::Value) -> bool {
    matches!(
        status.as_str(),
        Some("WAITING" | "ALLOCATED" | "CONNECTING" | "RUNNING" | "DYING")
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    berth_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo {
            region,
            runtime,
            wait_secs,
        } => demo(&cli, region, runtime, Duration::from_secs(*wait_secs)).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}
