//! The kill harness: the daemon dies (abort, as kill -9) at every crash point
//! of spin-up, claim, json_transport, teardown and drain; a clean restart must
//! leave no leaked container, directory or row, keep `free_slots` equal to what
//! the rows say, keep running sessions serving, let a client whose session was
//! claimed finish it with a retry, and finish a drain.

#[path = "host_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_service::faults::POINTS;
use support::*;
use uuid::Uuid;

/// The daemon's log of a test host, in its state dir (removed with it; its
/// last lines are quoted when the host misbehaves).
fn log_path(argv: &[String]) -> std::path::PathBuf {
    let at = argv.iter().position(|a| a == "--state-dir").unwrap() + 1;
    std::path::Path::new(&argv[at]).join("daemon.log")
}

fn log_tail(argv: &[String]) -> String {
    let text = std::fs::read_to_string(log_path(argv)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn start(argv: &[String], fault: Option<&str>) -> KillOnDrop {
    let log_path = log_path(argv);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).expect("the host's state dir");
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("the daemon's log file");
    let mut command = Command::new(host_binary());
    command
        .args(&argv[1..])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(point) = fault {
        command.env("BERTH_FAULT_POINT", point);
    }
    KillOnDrop(command.spawn().expect("starting host-service"))
}

async fn api(db: &TestDb, host_id: &str) -> Option<(u16, String)> {
    let row: Option<(Option<i32>, Option<String>, String)> =
        sqlx::query_as("SELECT api_port, cert_sha256, status::text FROM hosts WHERE id = $1")
            .bind(host_id)
            .fetch_optional(&db.pool)
            .await
            .ok()?;
    match row? {
        (Some(port), Some(cert), status) if status == "ACTIVE" => Some((port as u16, cert)),
        _ => None,
    }
}

/// What Docker, the rows, the directories and the host row must agree on.
async fn invariants(
    db: &TestDb,
    host_id: &str,
    state_dir: &Path,
    expect_warm: bool,
) -> Result<(), String> {
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=berth.host={host_id}"),
        "--format",
        "{{.Label \"berth.session\"}} {{.State}}",
    ]);
    let containers: BTreeSet<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    if let Some(bad) = listed.lines().find(|l| !l.ends_with("running")) {
        return Err(format!("a container is not running: {bad}"));
    }
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status::text FROM sessions WHERE host_id = $1")
            .bind(host_id)
            .fetch_all(&db.pool)
            .await
            .map_err(|e| e.to_string())?;
    let row_ids: BTreeSet<String> = rows.iter().map(|(id, _)| id.to_string()).collect();
    if containers != row_ids {
        return Err(format!("containers {containers:?} ≠ rows {row_ids:?}"));
    }
    if let Some((id, _)) = rows
        .iter()
        .find(|(_, s)| s == "DYING" || s == "ALLOCATED" || s == "CONNECTING")
    {
        return Err(format!("session {id} is stuck mid-way"));
    }
    for dir in ["sessions", "sockets", "logs"] {
        for entry in std::fs::read_dir(state_dir.join(dir))
            .map(|r| r.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !row_ids.contains(&name) {
                return Err(format!("leaked directory {dir}/{name}"));
            }
        }
    }
    let (capacity, free): (i32, i32) =
        sqlx::query_as("SELECT capacity, free_slots FROM hosts WHERE id = $1")
            .bind(host_id)
            .fetch_one(&db.pool)
            .await
            .map_err(|e| e.to_string())?;
    let taken = rows.iter().filter(|(_, s)| s != "WAITING").count() as i32;
    if free != capacity - taken {
        return Err(format!(
            "free_slots {free} ≠ capacity {capacity} − {taken} taken"
        ));
    }
    let warm = rows.len() as i32 - taken;
    if expect_warm && warm != free {
        return Err(format!("{warm} warm sessions for {free} free slots"));
    }
    Ok(())
}

async fn settle(
    db: &TestDb,
    host_id: &str,
    state_dir: &Path,
    expect_warm: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match invariants(db, host_id, state_dir, expect_warm).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs one crash point; returns what went wrong, if anything.
async fn crash_at(point: &'static str) -> Result<(), String> {
    let (db, host_id, state_dir, mut argv) = process_host(2).await;
    // One API port across the restart, so a client can retry where it was.
    let api_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .to_string();
    for arg in argv.iter_mut().filter(|a| *a == "127.0.0.1:0") {
        arg.clone_from(&api_addr);
    }
    let mut daemon = start(&argv, Some(point));
    let group = point.split('.').next().unwrap_or_default();

    // Drive the daemon to the point (spin-up points fire on their own).
    let mut survivor: Option<(Uuid, u16)> = None;
    // A claimed session whose client must be able to finish it after the crash.
    let mut claimed: Option<(Uuid, String, reqwest::Client)> = None;
    if group != "spawn" {
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_status(&db.pool, &host_id, "WAITING").await != 2 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{point}: no warm pool within 60 s; the daemon said:\n{}",
                    log_tail(&argv)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (port, cert) = api(&db, &host_id).await.ok_or("host not ACTIVE")?;
        let client = pinned_client(&cert);
        let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
        let (id, token) = allocate(&db.pool, &host_id, "user").await;
        if group == "teardown" || group == "drain" {
            let r = client
                .put(url("/json_transport"))
                .bearer_auth(&token)
                .json(&json_transport_body(id, "{}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            let host_port = body["ports"][0]["host_port"].as_u64().ok_or("no port")? as u16;
            if group == "teardown" {
                let _ = client
                    .delete(url(&format!("/sessions/{id}")))
                    .bearer_auth(&token)
                    .send()
                    .await;
            } else {
                if point == "drain.before_terminating" {
                    // The drain ends only once its running session does.
                    sqlx::query("UPDATE sessions SET status = 'DYING' WHERE id = $1")
                        .bind(id)
                        .execute(&db.pool)
                        .await
                        .map_err(|e| e.to_string())?;
                } else {
                    survivor = Some((id, host_port));
                }
                sqlx::query("UPDATE hosts SET status = 'DRAINING' WHERE id = $1")
                    .bind(&host_id)
                    .execute(&db.pool)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        } else if group == "finish" {
            let _ = client
                .put(url("/json_transport"))
                .bearer_auth(&token)
                .json(&json_transport_body(id, "{}"))
                .send()
                .await;
        }
        // claim: the ALLOCATED hint alone reaches the point.
        if group == "claim" || group == "finish" {
            claimed = Some((id, token, client));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("{point} was never reached"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if status.signal() != Some(libc_sigabrt()) {
        return Err(format!(
            "{point}: the daemon ended with {status}, not by the crash point"
        ));
    }
    drop(daemon);

    // A clean restart recovers.
    let restarted = start(&argv, None);
    let result = if group == "drain" {
        // The drain resumes: the running session gets the deadline, then the host ends.
        let served = match survivor {
            Some((_, host_port)) => {
                reqwest::get(format!("http://127.0.0.1:{host_port}/config.json"))
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
            None => true,
        };
        sqlx::query(
            "UPDATE sessions SET status = 'DYING' WHERE host_id = $1 AND status = 'RUNNING'",
        )
        .bind(&host_id)
        .execute(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
        let mut restarted = restarted;
        let deadline = Instant::now() + Duration::from_secs(60);
        let exit = loop {
            if let Some(s) = restarted.0.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if Instant::now() > deadline {
                return Err("the resumed drain did not finish".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let status: String = sqlx::query_scalar("SELECT status::text FROM hosts WHERE id = $1")
            .bind(&host_id)
            .fetch_one(&db.pool)
            .await
            .map_err(|e| e.to_string())?;
        let left = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.host={host_id}"),
        ]);
        if !served {
            Err("the running session stopped serving across the crash".into())
        } else if !exit.success() || status != "TERMINATING" || !left.trim().is_empty() {
            Err(format!(
                "drain after restart: exit {exit}, host {status}, containers left: {}",
                left.split_whitespace().count()
            ))
        } else {
            Ok(())
        }
    } else {
        let finished = match &claimed {
            Some((id, token, client)) => client_retry(&api_addr, client, *id, token).await,
            None => Ok(()),
        };
        let settled = match finished {
            Ok(()) => settle(&db, &host_id, &state_dir, true).await,
            Err(e) => Err(e),
        };
        drop(restarted);
        settled
    };
    remove_host_containers(&host_id);
    berth_testing::remove_tree(&state_dir);
    db.drop_database().await;
    result.map_err(|e| format!("{point}: {e}"))
}

/// The client whose json_transport died with the daemon tries again with the
/// same token: its session must run (or, if it already ran, say so).
async fn client_retry(
    api_addr: &str,
    client: &reqwest::Client,
    id: Uuid,
    token: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = client
            .put(format!("https://{api_addr}/json_transport"))
            .bearer_auth(token)
            .json(&json_transport_body(id, "{}"))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) if r.status() == 409 => {
                let status: serde_json::Value = client
                    .get(format!("https://{api_addr}/sessions/{id}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                return match status["status"].as_str() {
                    Some("RUNNING") => Ok(()),
                    other => Err(format!("retry answered 409 for a session in {other:?}")),
                };
            }
            Ok(r) => {
                return Err(format!(
                    "the client's retry after the crash got {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ))
            }
            // The restarted daemon is not listening yet.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(format!("the restarted daemon never answered: {e}")),
        }
    }
}

fn libc_sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_leaks_nothing_and_costs_no_running_session() {
    let mut failures = vec![];
    for point in POINTS {
        if let Err(e) = crash_at(point).await {
            failures.push(e);
        }
    }
    eprintln!(
        "kill harness: {} crash points, {} failed",
        POINTS.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_among_stray_containers_answers_without_waiting_for_each_to_stop() {
    let (db, host_id, state_dir, mut argv) = process_host(4).await;
    let api_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    for arg in argv.iter_mut().filter(|a| *a == "127.0.0.1:0") {
        arg.clone_from(&api_addr);
    }
    let daemon = start(&argv, None);
    eventually("warm-up", Duration::from_secs(60), || async {
        count_status(&db.pool, &host_id, "WAITING").await == 4
    })
    .await;
    let (_, cert) = api(&db, &host_id).await.expect("host ACTIVE");
    drop(daemon);
    // Every container is now a stray: its row is gone.
    sqlx::query("DELETE FROM sessions WHERE host_id = $1")
        .bind(&host_id)
        .execute(&db.pool)
        .await
        .unwrap();

    let started = Instant::now();
    let _restarted = start(&argv, None);
    let client = pinned_client(&cert);
    loop {
        let answered = client
            .get(format!("https://{api_addr}/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restarted daemon never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let up_after = started.elapsed();
    eprintln!("restart among 4 strays: API answered after {up_after:?}");
    // One stop grace per stray, one after the other, took over 4 s here.
    assert!(
        up_after < Duration::from_millis(2500),
        "the API answered only after {up_after:?}"
    );
    drop(_restarted);
    remove_host_containers(&host_id);
    berth_testing::remove_tree(&state_dir);
    db.drop_database().await;
}
