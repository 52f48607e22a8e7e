//! The scaler killed (abort, as kill -9) at each crash point of launches,
//! deploys and sweeps, against moto: after a restart no instance is orphaned,
//! the cap holds, a deploy has one buffer and finishes, a dead host is gone.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scaling_service::controller::pass;
use scaling_service::deploy;
use scaling_service::faults::POINTS;
use support::*;

struct Scaler(Child);

impl Drop for Scaler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

async fn crash_at(point: &'static str) -> Result<(), String> {
    let db = TestDb::new().await;
    region(&db, 4, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let group = point.split('.').next().unwrap_or_default();
    let mut stale_host = None;
    // Bring the region to where the point is reached (in-process, no fault).
    if group != "launch" {
        let s = scaler(&db, &env, aws.clone(), &[]).await;
        pass(&s, REGION).await.map_err(|e| e.to_string())?;
        register_hosts(&db).await;
        if group == "deploy" {
            deploy::start(
                &db.pool,
                REGION,
                "ami-22222222",
                "sha-2",
                Duration::from_secs(600),
            )
            .await
            .map_err(|e| e.to_string())?;
        } else {
            let (host, _) = host_statuses(&db).await.remove(0);
            sqlx::query(
                "UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1",
            )
            .bind(&host)
            .execute(&db.pool)
            .await
            .map_err(|e| e.to_string())?;
            stale_host = Some(host);
        }
    }
    // A silent host is UNREACHABLE once the scaler has watched for 3 s, and
    // terminated 1 s of unreachability later: the sweep's point is reached.
    let argv = args(
        &db,
        &env,
        &["--heartbeat-secs", "1", "--unreachable-grace-secs", "1"],
    );
    let mut process = Scaler(
        Command::new(env!("CARGO_BIN_EXE_scaling-service"))
            .args(&argv[1..])
            .env("BERTH_FAULT_POINT", point)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut released = false;
    let status = loop {
        if let Some(status) = process.0.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if point == "deploy.before_swap"
            && !released
            && count(
                &db,
                "SELECT count(*) FROM hosts WHERE image_id = 'ami-22222222'",
            )
            .await
                == 2
        {
            register_hosts(&db).await;
            deploy::release(&db.pool, REGION)
                .await
                .map_err(|e| e.to_string())?;
            released = true;
        }
        if let Some(stale) = &stale_host {
            // The other hosts are alive and say so; with all of them silent the
            // mass-silence brake would rightly terminate none.
            sqlx::query(
                "UPDATE hosts SET last_heartbeat_at = now() WHERE id <> $1 AND status = 'ACTIVE'",
            )
            .bind(stale)
            .execute(&db.pool)
            .await
            .map_err(|e| e.to_string())?;
        }
        if Instant::now() > deadline {
            return Err(format!("{point} was never reached"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if status.signal() != Some(nix::sys::signal::Signal::SIGABRT as i32) {
        return Err(format!(
            "{point}: the scaler ended with {status}, not by the crash point"
        ));
    }
    drop(process);

    // A new scaler takes over.
    let s = scaler(
        &db,
        &env,
        aws.clone(),
        &["--heartbeat-secs", "1", "--unreachable-grace-secs", "1"],
    )
    .await;
    for _ in 0..4 {
        pass(&s, REGION)
            .await
            .map_err(|e| format!("{point}: pass after restart: {e}"))?;
        register_hosts(&db).await;
    }
    let cloud = live_cloud(aws.as_ref(), &env).await;
    let rows: Vec<String> = host_statuses(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    if let Some(orphan) = cloud.iter().find(|i| !rows.contains(&i.id)) {
        return Err(format!("{point}: instance {} has no row", orphan.id));
    }
    if cloud.len() > 5 || rows.len() > 5 {
        return Err(format!(
            "{point}: {} instances / {} rows above max_hosts 5",
            cloud.len(),
            rows.len()
        ));
    }
    let pending = count(&db, "SELECT count(*) FROM launches WHERE state = 'PENDING'").await;
    if pending != 0 {
        return Err(format!("{point}: {pending} launches still PENDING"));
    }
    match group {
        "deploy" => {
            let candidates = count(
                &db,
                "SELECT count(*) FROM hosts WHERE image_id = 'ami-22222222'",
            )
            .await;
            if candidates != 2 {
                return Err(format!(
                    "{point}: {candidates} candidate hosts, expected one buffer of 2"
                ));
            }
            if !released {
                deploy::release(&db.pool, REGION)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            pass(&s, REGION).await.map_err(|e| e.to_string())?;
            let current: String =
                sqlx::query_scalar("SELECT image_id FROM images WHERE status = 'CURRENT'")
                    .fetch_one(&db.pool)
                    .await
                    .map_err(|e| e.to_string())?;
            if current != "ami-22222222" {
                return Err(format!(
                    "{point}: the deploy did not finish (CURRENT is {current})"
                ));
            }
        }
        "sweep" => {
            let host = stale_host.unwrap_or_default();
            if rows.contains(&host) || cloud.iter().any(|i| i.id == host) {
                return Err(format!("{point}: the dead host {host} is still there"));
            }
        }
        _ => {
            let active = count(&db, "SELECT count(*) FROM hosts WHERE status = 'ACTIVE'").await;
            if active != 2 {
                return Err(format!(
                    "{point}: {active} ACTIVE hosts, expected the 2 the buffer needs"
                ));
            }
        }
    }
    db.drop_database().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_crash_at_any_point_leaves_no_orphan_and_holds_the_cap() {
    let mut failures = vec![];
    for point in POINTS {
        if let Err(e) = crash_at(point).await {
            failures.push(e);
        }
    }
    eprintln!(
        "scaler kill harness: {} crash points, {} failed",
        POINTS.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
