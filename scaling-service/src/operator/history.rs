//! The fleet's history for the dashboard's charts: every sample interval each
//! region's hosts, capacity, free slots, sessions and assigns, one row per
//! region and interval whichever replica writes it first (later writes in the
//! same interval refresh it), kept for the configured hours. The same task
//! prunes the audit trail past its retention.

use std::sync::Arc;
use std::time::Duration;

use crate::scaler::Scaler;

/// How often the retention sweeps run.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Samples until the scaler stops.
pub(crate) async fn run(scaler: Arc<Scaler>) {
    let interval = Duration::from_secs(scaler.config.history_sample_secs);
    // Twice per interval: the current row gets its running figures, the
    // previous row its final assign count.
    let mut every = tokio::time::interval(interval / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = scaler.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = sample(&scaler.db, interval).await {
            tracing::warn!(%error, "sampling the fleet's history failed; trying again next interval");
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            prune(&scaler).await;
        }
    }
}

async fn sample(db: &sqlx::PgPool, interval: Duration) -> Result<(), sqlx::Error> {
    let secs = interval.as_secs_f64();
    sqlx::query(
        "WITH bucket AS (SELECT to_timestamp(floor(extract(epoch FROM now()) / $1) * $1) AS at) \
         INSERT INTO fleet_history (region, at, hosts, capacity, free_slots, sessions, assigns) \
         SELECT r.name, bucket.at, \
                (SELECT count(*) FROM hosts WHERE region = r.name AND status NOT IN ('TERMINATING', 'TERMINATED')), \
                coalesce((SELECT sum(capacity) FROM hosts WHERE region = r.name AND status = 'ACTIVE'), 0), \
                coalesce((SELECT sum(free_slots) FROM hosts WHERE region = r.name AND status = 'ACTIVE'), 0), \
                (SELECT count(*) FROM sessions s JOIN hosts h ON h.id = s.host_id \
                 WHERE h.region = r.name AND s.user_id IS NOT NULL), \
                (SELECT count(*) FROM audit WHERE region = r.name AND action = 'session.assign' \
                 AND outcome = 'ok' AND at >= bucket.at) \
         FROM regions r, bucket \
         ON CONFLICT (region, at) DO UPDATE SET hosts = EXCLUDED.hosts, capacity = EXCLUDED.capacity, \
                free_slots = EXCLUDED.free_slots, sessions = EXCLUDED.sessions, assigns = EXCLUDED.assigns",
    )
    .bind(secs)
    .execute(db)
    .await?;
    // Assigns recorded after the previous row's last refresh.
    sqlx::query(
        "UPDATE fleet_history f SET assigns = (SELECT count(*) FROM audit a WHERE a.region = f.region \
                AND a.action = 'session.assign' AND a.outcome = 'ok' \
                AND a.at >= f.at AND a.at < f.at + make_interval(secs => $1)) \
         WHERE f.at = to_timestamp(floor(extract(epoch FROM now()) / $1) * $1 - $1)",
    )
    .bind(secs)
    .execute(db)
    .await?;
    Ok(())
}

async fn prune(scaler: &Scaler) {
    let hours = scaler.config.history_retention_hours as i32;
    if let Err(error) =
        sqlx::query("DELETE FROM fleet_history WHERE at < now() - make_interval(hours => $1)")
            .bind(hours)
            .execute(&scaler.db)
            .await
    {
        tracing::warn!(%error, "pruning the fleet's history failed");
    }
    match crate::audit::prune(&scaler.db, scaler.config.audit_retention_days).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "pruned audit records past their retention"),
        Err(error) => tracing::warn!(%error, "pruning the audit trail failed"),
    }
}
