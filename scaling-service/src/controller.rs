//! Region controllers: one serialized task per enabled region, woken by
//! NOTIFY hints, a periodic tick and API events. A controller acts only while
//! it holds its region's advisory lock on a dedicated connection, so several
//! replicas can run and exactly one decides per region. Each pass reads the
//! truth and decides once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_common::db::{DbError, Hint, HintListener};
use sqlx::pool::PoolConnection;
use sqlx::Postgres;
use tokio::sync::mpsc;

use crate::forecast::ForecastPolicy;
use crate::policy::{Action, Policy};
use crate::scaler::Scaler;
use crate::state::{self, StateError};
use crate::{deploy, launch, sweeps};

/// Watches `regions` and keeps one controller per enabled region; routes hints.
pub async fn supervise(scaler: Arc<Scaler>) {
    let Some(mut listener) =
        HintListener::connect_until_stopped(&scaler.db, &["scaling", "config"], &scaler.stop).await
    else {
        return;
    };
    loop {
        let hint = tokio::select! {
            _ = scaler.stop.cancelled() => return,
            hint = listener.recv() => hint,
        };
        match hint {
            Hint::Resync => {
                // Reconnected: heartbeats written meanwhile were not seen live.
                scaler.evidence.gap();
                sync_controllers(&scaler).await;
                scaler.wake_all();
            }
            Hint::Notification { channel, .. } if channel == "config" => {
                sync_controllers(&scaler).await;
                scaler.wake_all();
            }
            Hint::Notification { payload, .. } => {
                let region = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v.get("region").and_then(|r| r.as_str()).map(str::to_owned));
                match region {
                    Some(region) => scaler.wake(&region),
                    None => scaler.wake_all(),
                }
            }
        }
    }
}

async fn sync_controllers(scaler: &Arc<Scaler>) {
    let enabled: Vec<String> =
        match sqlx::query_scalar("SELECT name FROM regions WHERE enabled ORDER BY name")
            .fetch_all(&scaler.db)
            .await
        {
            Ok(names) => names,
            Err(error) => return tracing::warn!(%error, "reading regions failed"),
        };
    for region in scaler.controller_regions() {
        if !enabled.contains(&region) {
            tracing::info!(
                region,
                "region disabled or removed; stopping its controller"
            );
            scaler.remove_controller(&region);
        }
    }
    for region in enabled {
        if let Some(wake) = scaler.add_controller(&region) {
            tracing::info!(region, "starting the region's controller");
            let scaler2 = scaler.clone();
            scaler.tasks.spawn(run_region(scaler2, region, wake));
        }
    }
}

/// The advisory lock key of a region (stable across replicas and versions).
fn lock_key(region: &str) -> i64 {
    // FNV-1a: deterministic, unlike the std hasher.
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in b"berth.region.".iter().chain(region.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash as i64
}

async fn try_lock(scaler: &Scaler, region: &str) -> Option<PoolConnection<Postgres>> {
    let mut conn = scaler.db.acquire().await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(region))
        .fetch_one(&mut *conn)
        .await
        .ok()?;
    got.then_some(conn)
}

async fn still_locked(conn: &mut PoolConnection<Postgres>) -> bool {
    sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok()
}

/// A region's passes are at least this far apart: a burst of assigns and
/// freed slots (each a wake) costs one pass, not one each.
const MIN_PASS_SPACING: Duration = Duration::from_millis(250);
/// ... and at least this many times the last pass's duration apart, so a
/// region whose passes grow with its fleet (or slow under load) spends at
/// most a fifth of its time in them, leaving the database to the assigns ...
const PASS_SPACING_PER_PASS_TIME: u32 = 5;
/// ... but never further than this: a pass that waited on the cloud (a
/// launch) must not hold back the next one.
const MAX_PASS_SPACING: Duration = Duration::from_secs(1);

fn pass_spacing(pass_took: Duration) -> Duration {
    (pass_took * PASS_SPACING_PER_PASS_TIME).clamp(MIN_PASS_SPACING, MAX_PASS_SPACING)
}
/// How often a region's controller forgets demand older than the forecast keeps.
const PRUNE_SPACING: Duration = Duration::from_secs(3600);
/// A region's instances are listed (DescribeInstances) at most this often;
/// passes in between decide from the rows alone. Every tick lists them.
const LISTING_SPACING: Duration = Duration::from_secs(5);

pub async fn run_region(scaler: Arc<Scaler>, region: String, mut wake: mpsc::Receiver<()>) {
    let mut lock: Option<PoolConnection<Postgres>> = None;
    let mut listed: Option<Instant> = None;
    let mut pruned: Option<Instant> = None;
    loop {
        if let Some(conn) = lock.as_mut() {
            if !still_locked(conn).await {
                tracing::warn!(region, "lost the region's lock connection");
                scaler.evidence.not_leading(&region);
                lock = None;
            }
        }
        if lock.is_none() {
            lock = try_lock(&scaler, &region).await;
            if lock.is_some() {
                tracing::info!(region, "this replica now controls the region");
                // A new controller has seen no heartbeat yet: fresh grace for all.
                scaler.evidence.leading(&region);
            }
        }
        let started = Instant::now();
        let mut pass_took = Duration::ZERO;
        if lock.is_some() {
            let list = listed.is_none_or(|at| at.elapsed() >= LISTING_SPACING);
            if list {
                listed = Some(started);
            }
            if let Err(error) = pass_with(&scaler, &region, list).await {
                tracing::error!(region, %error, "controller pass failed; retrying next tick");
            }
            if pruned.is_none_or(|at| at.elapsed() >= PRUNE_SPACING) {
                pruned = Some(started);
                if let Err(error) = crate::demand::prune(&scaler.db, &region).await {
                    tracing::warn!(region, %error, "forgetting old demand failed");
                }
            }
            pass_took = started.elapsed();
            scaler.metrics.passes.inc();
            scaler.metrics.pass_seconds.observe(pass_took.as_secs_f64());
        }
        tokio::select! {
            _ = scaler.stop.cancelled() => break,
            woken = wake.recv() => if woken.is_none() { break },
            _ = tokio::time::sleep(scaler.config.tick()) => listed = None,
        }
        // Wakes meanwhile collapse into the one pending in the channel.
        tokio::select! {
            _ = scaler.stop.cancelled() => break,
            _ = tokio::time::sleep_until((started + pass_spacing(pass_took)).into()) => {}
        }
    }
    scaler.evidence.not_leading(&region);
    if let Some(mut conn) = lock {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key(&region))
            .execute(&mut *conn)
            .await;
    }
}

/// One decision round for a region, with the cloud's instance listing.
pub async fn pass(scaler: &Scaler, region_name: &str) -> Result<(), StateError> {
    pass_with(scaler, region_name, true).await
}

/// One decision round; the sweeps that need the cloud's listing run only
/// when `list` (the listing is rate-bounded, the rows are not).
async fn pass_with(scaler: &Scaler, region_name: &str, list: bool) -> Result<(), StateError> {
    let Some(region) = state::region(&scaler.db, region_name).await? else {
        return Ok(());
    };
    if !region.enabled {
        return Ok(());
    }
    let env = &scaler.config.common.environment;
    if list {
        scaler.metrics.cloud_listings.inc();
        match scaler.provider.describe(region_name, env).await {
            Ok(cloud) => {
                launch::resolve_pending(scaler, &region, &cloud).await?;
                sweeps::lost_instances(scaler, region_name, &cloud).await?;
                sweeps::orphans(scaler, region_name, &cloud).await?;
            }
            Err(error) => {
                tracing::warn!(region = region_name, %error, "listing instances failed; sweeps wait for the next pass")
            }
        }
    }
    sweeps::liveness(scaler, region_name).await?;
    sweeps::terminate_and_verify(scaler, region_name).await?;

    let view = state::view(&scaler.db, &region, vec![]).await?;
    // Only a deploy in progress changes what the policy must see.
    let view = match deploy::step(scaler, &region, &view).await? {
        None => view,
        Some(protected) => state::view(&scaler.db, &region, protected).await?,
    };
    let current_sha = state::current_image(&scaler.db, region_name)
        .await?
        .map(|(_, sha)| sha)
        .unwrap_or_default();
    // The region's row chooses: demand is read only for a forecast region.
    let actions = match view.demand {
        Some(_) => ForecastPolicy.decide(&view),
        None => scaler.policy.decide(&view),
    };
    for action in actions {
        match action {
            Action::Launch { image_id, count } => {
                launch::launch(scaler, &region, &image_id, &current_sha, count).await?
            }
            Action::Drain { host_id, reason } => {
                drain_if_still_empty(scaler, &host_id, &reason).await?
            }
        }
    }
    Ok(())
}

/// Drains only if still ACTIVE and empty: an assign that took a slot since
/// the view was read wins, and the host stays.
async fn drain_if_still_empty(scaler: &Scaler, host_id: &str, reason: &str) -> Result<(), DbError> {
    let moved = sqlx::query(
        "UPDATE hosts SET status = 'DRAINING', status_reason = $2, draining_since = now() \
         WHERE id = $1 AND status = 'ACTIVE' AND free_slots = capacity",
    )
    .bind(host_id)
    .bind(reason)
    .execute(&scaler.db)
    .await
    .map_err(DbError::query("draining a host"))?;
    if moved.rows_affected() == 1 {
        tracing::info!(host = host_id, reason, "draining host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_that_take_longer_are_spaced_further_apart() {
        use std::time::Duration;
        assert_eq!(
            super::pass_spacing(Duration::from_millis(3)),
            super::MIN_PASS_SPACING
        );
        assert_eq!(
            super::pass_spacing(Duration::from_millis(140)),
            Duration::from_millis(700)
        );
        assert_eq!(
            super::pass_spacing(Duration::from_secs(20)),
            super::MAX_PASS_SPACING
        );
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("us-east-1"), super::lock_key("us-east-1"));
        assert_ne!(super::lock_key("us-east-1"), super::lock_key("us-east-2"));
    }
}
