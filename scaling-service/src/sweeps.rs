//! Liveness and clean-up: hosts that never register or stop heartbeating are
//! drained and terminated; TERMINATING hosts are terminated, verified gone and
//! their rows deleted; cloud instances of this environment that the database
//! does not know are terminated; rows whose instance is gone are deleted.

use std::collections::HashSet;
use std::time::Duration;

use berth_common::db::DbError;
use chrono::Utc;
use uuid::Uuid;

use crate::provider::CloudInstance;
use crate::scaler::Scaler;

/// A freshly launched instance may not be listed yet; rows younger than this
/// are never deleted for being absent from the cloud.
const LISTING_GRACE: Duration = Duration::from_secs(120);

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Moves hosts whose time is up: unregistered → TERMINATING; silent ACTIVE →
/// DRAINING; silent or overdue DRAINING → TERMINATING.
pub async fn liveness(scaler: &Scaler, region: &str) -> Result<(), DbError> {
    let cfg = &scaler.config;
    let unregistered = sqlx::query(
        "UPDATE hosts SET status = 'TERMINATING', status_reason = 'did not register in time' \
         WHERE region = $1 AND status IN ('LAUNCHING', 'PRE_CONNECTION') AND launched_at < now() - make_interval(secs => $2)",
    )
    .bind(region)
    .bind(secs(cfg.registration_timeout()))
    .execute(&scaler.db)
    .await
    .map_err(DbError::query("timing out unregistered hosts"))?;
    let silent = sqlx::query(
        "UPDATE hosts SET status = 'DRAINING', status_reason = 'missed heartbeats', draining_since = now() \
         WHERE region = $1 AND status = 'ACTIVE' AND last_heartbeat_at < now() - make_interval(secs => $2)",
    )
    .bind(region)
    .bind(secs(cfg.heartbeat_grace()))
    .execute(&scaler.db)
    .await
    .map_err(DbError::query("draining silent hosts"))?;
    let done = sqlx::query(
        "UPDATE hosts SET status = 'TERMINATING', status_reason = coalesce(status_reason, 'drain overdue') \
         WHERE region = $1 AND status = 'DRAINING' AND (last_heartbeat_at < now() - make_interval(secs => $2) \
                                                        OR draining_since < now() - make_interval(secs => $3))",
    )
    .bind(region)
    .bind(secs(cfg.heartbeat_grace()))
    .bind(secs(cfg.drain_timeout()))
    .execute(&scaler.db)
    .await
    .map_err(DbError::query("terminating overdue draining hosts"))?;
    // Users are told how their sessions ended for a week; then it is forgotten.
    sqlx::query("DELETE FROM session_history WHERE ended_at < now() - interval '7 days'")
        .execute(&scaler.db)
        .await
        .map_err(DbError::query("pruning old session endings"))?;
    let moved = unregistered.rows_affected() + silent.rows_affected() + done.rows_affected();
    if moved > 0 {
        tracing::warn!(
            region,
            unregistered = unregistered.rows_affected(),
            silent = silent.rows_affected(),
            overdue = done.rows_affected(),
            "liveness moved hosts"
        );
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
            sqlx::query("DELETE FROM hosts WHERE id = $1")
                .bind(id)
                .execute(&scaler.db)
                .await
                .map_err(DbError::query("deleting a vanished host"))?;
        }
    }
    Ok(strays.len())
}
