//! Liveness and clean-up: hosts that never register are terminated; hosts that
//! stop heartbeating become UNREACHABLE and are terminated only on evidence; TERMINATING hosts are terminated, verified gone and
//! their rows deleted; cloud instances of this environment that the database
//! does not know are terminated; rows whose instance is gone are deleted.

use std::collections::HashSet;
use std::time::Duration;

use berth_common::db::DbError;
use chrono::Utc;
use uuid::Uuid;

use crate::evidence::Silence;
use crate::provider::{CloudInstance, InstanceState};
use crate::scaler::Scaler;

/// A freshly launched instance may not be listed yet; rows younger than this
/// are never deleted for being absent from the cloud.
const LISTING_GRACE: Duration = Duration::from_secs(120);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Moves hosts whose time is up, on evidence only (see `evidence`):
/// unregistered → TERMINATING; silent ACTIVE → UNREACHABLE (no new assigns,
/// sessions untouched); UNREACHABLE or DRAINING silent past the unreachable
/// grace → TERMINATING with their sessions ending HOST_LOST — unless so many
/// of the region's hosts went silent together that a shared fault is more
/// likely than dead machines; overdue DRAINING → TERMINATING.
pub async fn liveness(scaler: &Scaler, region: &str) -> Result<(), DbError> {
    let cfg = &scaler.config;
    let watched = scaler.evidence.watched_for(region);
    let unregistered = sqlx::query(
        "UPDATE hosts SET status = 'TERMINATING', status_reason = 'did not register in time' \
         WHERE region = $1 AND status IN ('LAUNCHING', 'PRE_CONNECTION') AND launched_at < now() - make_interval(secs => $2)",
    )
    .bind(region)
    .bind(secs(cfg.registration_timeout()))
    .execute(&scaler.db)
    .await
    .map_err(DbError::query("timing out unregistered hosts"))?;

    let heartbeat_grace = cfg.heartbeat_grace();
    let (live_hosts, silent_hosts): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE last_heartbeat_at < now() - make_interval(secs => $2)) \
         FROM hosts WHERE region = $1 AND status IN ('ACTIVE', 'UNREACHABLE', 'DRAINING')",
    )
    .bind(region)
    .bind(secs(heartbeat_grace))
    .fetch_one(&scaler.db)
    .await
    .map_err(DbError::query("counting silent hosts"))?;
    let silence = Silence::judge(silent_hosts, live_hosts, cfg.mass_silence_percent);
    scaler.set_silence(region, silence);
    if silence.mass_silence_suspected {
        tracing::warn!(
            region,
            silent_hosts,
            live_hosts,
            "many hosts went silent together; none is terminated for silence while this lasts"
        );
    }

    // Silence is evidence only for as long as this scaler could have heard.
    let mut unreachable = 0;
    if watched >= heartbeat_grace {
        unreachable = sqlx::query(
            "UPDATE hosts SET status = 'UNREACHABLE', unreachable_since = now(), \
                    status_reason = 'no heartbeat since ' || to_char(last_heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             WHERE region = $1 AND status = 'ACTIVE' AND last_heartbeat_at < now() - make_interval(secs => $2)",
        )
        .bind(region)
        .bind(secs(heartbeat_grace))
        .execute(&scaler.db)
        .await
        .map_err(DbError::query("marking silent hosts unreachable"))?
        .rows_affected();
    }
    let mut lost: Vec<String> = vec![];
    let grace = cfg.unreachable_grace();
    if watched >= grace && !silence.mass_silence_suspected {
        lost = sqlx::query_scalar(
            "SELECT id FROM hosts WHERE region = $1 AND status IN ('UNREACHABLE', 'DRAINING') \
                AND last_heartbeat_at < now() - make_interval(secs => $2)",
        )
        .bind(region)
        .bind(secs(grace))
        .fetch_all(&scaler.db)
        .await
        .map_err(DbError::query("reading hosts unreachable past their grace"))?;
    }
    for host in &lost {
        let evidence = format!("no heartbeat for more than {} s", grace.as_secs());
        end_as_lost(scaler, host, &evidence).await?;
    }
    let overdue = sqlx::query(
        "UPDATE hosts SET status = 'TERMINATING', status_reason = coalesce(status_reason, 'drain overdue') \
         WHERE region = $1 AND status = 'DRAINING' AND draining_since < now() - make_interval(secs => $2)",
    )
    .bind(region)
    .bind(secs(cfg.drain_timeout()))
    .execute(&scaler.db)
    .await
    .map_err(DbError::query("terminating overdue draining hosts"))?;
    // Users are told how their sessions ended for a week; then it is forgotten.
    sqlx::query("DELETE FROM session_history WHERE ended_at < now() - interval '7 days'")
        .execute(&scaler.db)
        .await
        .map_err(DbError::query("pruning old session endings"))?;
    let moved =
        unregistered.rows_affected() + unreachable + lost.len() as u64 + overdue.rows_affected();
    if moved > 0 {
        tracing::warn!(
            region,
            unregistered = unregistered.rows_affected(),
            unreachable,
            lost = lost.len(),
            overdue = overdue.rows_affected(),
            "liveness moved hosts"
        );
    }
    Ok(())
}

/// A host proven gone: its users' sessions end as HOST_LOST with the evidence
/// (recorded when the row goes), and the host is terminated.
async fn end_as_lost(scaler: &Scaler, host: &str, evidence: &str) -> Result<(), DbError> {
    let reason = format!("host {host} was lost: {evidence}");
    let mut tx = scaler
        .db
        .begin()
        .await
        .map_err(DbError::query("starting to end a lost host"))?;
    sqlx::query(
        "UPDATE sessions SET outcome = 'HOST_LOST', status_reason = $2 \
         WHERE host_id = $1 AND user_id IS NOT NULL AND outcome IS NULL",
    )
    .bind(host)
    .bind(&reason)
    .execute(&mut *tx)
    .await
    .map_err(DbError::query("recording sessions of a lost host"))?;
    sqlx::query(
        "UPDATE hosts SET status = 'TERMINATING', status_reason = $2 \
         WHERE id = $1 AND status NOT IN ('TERMINATING', 'TERMINATED')",
    )
    .bind(host)
    .bind(&reason)
    .execute(&mut *tx)
    .await
    .map_err(DbError::query("terminating a lost host"))?;
    tx.commit()
        .await
        .map_err(DbError::query("ending a lost host"))?;
    tracing::warn!(host, evidence, "host lost; terminating it");
    Ok(())
}

/// Hosts the cloud lists as not running (stopped, shutting down, terminated)
/// are lost whatever their heartbeats say: that is evidence, not silence.
pub async fn lost_instances(
    scaler: &Scaler,
    region: &str,
    cloud: &[CloudInstance],
) -> Result<(), DbError> {
    let hosts: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM hosts WHERE region = $1 AND status IN ('ACTIVE', 'UNREACHABLE', 'DRAINING') \
            AND launch_id IS NOT NULL",
    )
    .bind(region)
    .fetch_all(&scaler.db)
    .await
    .map_err(DbError::query("reading a region's live hosts"))?;
    for host in hosts {
        let stopped = cloud.iter().find(|i| i.id == host).map(|i| i.state);
        if let Some(state) =
            stopped.filter(|s| !matches!(s, InstanceState::Pending | InstanceState::Running))
        {
            end_as_lost(
                scaler,
                &host,
                &format!("the cloud reports the instance {state:?}"),
            )
            .await?;
        }
    }
    Ok(())
}

/// Terminates TERMINATING hosts, then deletes the rows whose instance the
/// cloud (listed in `cloud`, fetched after the terminate) shows gone.
pub async fn terminate_and_verify(scaler: &Scaler, region: &str) -> Result<(), DbError> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM hosts WHERE region = $1 AND status = 'TERMINATING'")
            .bind(region)
            .fetch_all(&scaler.db)
            .await
            .map_err(DbError::query("reading TERMINATING hosts"))?;
    if ids.is_empty() {
        return Ok(());
    }
    if let Err(error) = scaler.provider.terminate(region, &ids).await {
        tracing::warn!(region, %error, "terminating hosts failed; retrying next pass");
        return Ok(());
    }
    scaler.metrics.terminations.inc_by(ids.len() as u64);
    crate::faults::point("sweep.after_terminate");
    let cloud = match scaler
        .provider
        .describe(region, &scaler.config.common.environment)
        .await
    {
        Ok(cloud) => cloud,
        Err(error) => {
            tracing::warn!(region, %error, "verifying terminations failed; retrying next pass");
            return Ok(());
        }
    };
    for id in ids {
        let gone = cloud
            .iter()
            .find(|i| i.id == id)
            .is_none_or(|i| i.state.is_gone());
        if gone {
            sqlx::query("DELETE FROM hosts WHERE id = $1 AND status = 'TERMINATING'")
                .bind(&id)
                .execute(&scaler.db)
                .await
                .map_err(DbError::query("deleting a terminated host"))?;
            tracing::info!(region, host = id, "host terminated and removed");
        }
    }
    Ok(())
}

/// Orphans both ways: tagged instances unknown to the database are
/// terminated; rows (of launched hosts) whose instance is gone are deleted.
pub async fn orphans(
    scaler: &Scaler,
    region: &str,
    cloud: &[CloudInstance],
) -> Result<usize, DbError> {
    let known: Vec<(String, Option<Uuid>, chrono::DateTime<Utc>)> =
        sqlx::query_as("SELECT id, launch_id, launched_at FROM hosts WHERE region = $1")
            .bind(region)
            .fetch_all(&scaler.db)
            .await
            .map_err(DbError::query("reading a region's hosts"))?;
    let pending: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM launches WHERE state = 'PENDING'")
            .fetch_all(&scaler.db)
            .await
            .map_err(DbError::query("reading pending launches"))?
            .into_iter()
            .collect();
    let known_ids: HashSet<&str> = known.iter().map(|(id, _, _)| id.as_str()).collect();
    let strays: Vec<String> = cloud
        .iter()
        .filter(|i| !i.state.is_gone() && !known_ids.contains(i.id.as_str()))
        .filter(|i| {
            i.launch_id
                .is_none_or(|l| !pending.contains(&l) && !scaler.is_launching(l))
        })
        .map(|i| i.id.clone())
        .collect();
    if !strays.is_empty() {
        tracing::warn!(region, instances = ?strays, "terminating instances unknown to the database");
        if let Err(error) = scaler.provider.terminate(region, &strays).await {
            tracing::warn!(region, %error, "terminating orphaned instances failed; retrying next pass");
        } else {
            scaler.metrics.terminations.inc_by(strays.len() as u64);
        }
    }
    let grace = chrono::Duration::from_std(LISTING_GRACE).unwrap_or_default();
    for (id, launch_id, launched_at) in &known {
        // Only hosts this scaler launched are expected in the listing.
        if launch_id.is_none() || Utc::now() - *launched_at < grace {
            continue;
        }
        let gone = cloud
            .iter()
            .find(|i| i.id == *id)
            .is_none_or(|i| i.state.is_gone());
        if gone {
            tracing::warn!(
                region,
                host = id,
                "deleting the row of an instance that no longer exists"
            );
            end_as_lost(scaler, id, "the cloud no longer lists the instance").await?;
            sqlx::query("DELETE FROM hosts WHERE id = $1")
                .bind(id)
                .execute(&scaler.db)
                .await
                .map_err(DbError::query("deleting a vanished host"))?;
        }
    }
    Ok(strays.len())
}
