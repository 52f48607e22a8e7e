//! A region's demand as the database recorded it (`assigns`, one row per
//! assign, written by triggers): counted in the forecast's windows for the
//! region controller, and exported as a replayable trace.

use berth_common::db::DbError;
use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use crate::forecast::{plan, Demand, DemandQuery, DemandView, ForecastSettings, Plan};
use crate::trace::{Arrival, Trace};

/// Days of assigns kept; the regions table caps the forecast's history below it.
pub const KEPT_DAYS: i64 = 15;

/// The region's first recorded arrival (the start of its known history).
async fn history_since(db: &PgPool, region: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    sqlx::query_scalar("SELECT min(assigned_at) FROM assigns WHERE region = $1")
        .bind(region)
        .fetch_one(db)
        .await
        .map_err(DbError::query("reading a region's first assign"))
}

/// The forecast's view of `region` at `now`: one range count per window.
pub async fn read(
    db: &PgPool,
    region: &str,
    settings: &ForecastSettings,
    now: DateTime<Utc>,
) -> Result<DemandView, DbError> {
    let since = history_since(db, region).await?;
    let query = DemandQuery::new(settings, now, since);
    let (starts, ends): (Vec<_>, Vec<_>) = query.windows.iter().copied().unzip();
    let counts: Vec<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM assigns a \
                  WHERE a.region = $1 AND a.assigned_at >= w.s AND a.assigned_at < w.e) \
         FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS w(s, e, i) ORDER BY w.i",
    )
    .bind(region)
    .bind(&starts)
    .bind(&ends)
    .fetch_all(db)
    .await
    .map_err(DbError::query("counting a region's recent and past assigns"))?;
    let counts: Vec<u32> = counts
        .into_iter()
        .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
        .collect();
    Ok(query.view(&counts))
}

/// What the forecast policy plans for `region` now (`None`: the region is
/// not on it, or is gone): the same row and counts its controller reads.
pub async fn current_plan(db: &PgPool, region: &str) -> Result<Option<Plan>, DbError> {
    let Some(row) = crate::state::region(db, region).await? else {
        return Ok(None);
    };
    let Some(settings) = row.forecast() else {
        return Ok(None);
    };
    // Launches come a host at a time, of the preferred type: the
    // controller's view's capacity.
    let capacity = match row.instance_types.first() {
        Some(t) => match crate::state::capacity_of(db, t).await {
            Ok(c) => c,
            Err(crate::state::StateError::Db(e)) => return Err(e),
            // The controller cannot launch here either: plan slot by slot.
            Err(_) => 1,
        },
        None => 1,
    };
    let view = read(db, region, &settings, Utc::now()).await?;
    Ok(Some(plan(
        &Demand { settings, view },
        row.target_free_slots,
        capacity,
    )))
}

/// Forgets assigns older than [`KEPT_DAYS`].
pub async fn prune(db: &PgPool, region: &str) -> Result<u64, DbError> {
    sqlx::query(
        "DELETE FROM assigns WHERE region = $1 AND assigned_at < now() - make_interval(days => $2)",
    )
    .bind(region)
    .bind(KEPT_DAYS as i32)
    .execute(db)
    .await
    .map(|r| r.rows_affected())
    .map_err(DbError::query("pruning old assigns"))
}

/// The region's demand from `since` to `until` as a trace: every assign,
/// with its session's duration (a session still running has run until
/// `until`, and is written so).
pub async fn export(
    db: &PgPool,
    region: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Trace, DbError> {
    let rows: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT assigned_at, ended_at FROM assigns \
         WHERE region = $1 AND assigned_at >= $2 AND assigned_at < $3 ORDER BY assigned_at",
    )
    .bind(region)
    .bind(since)
    .bind(until)
    .fetch_all(db)
    .await
    .map_err(DbError::query("reading a region's assigns"))?;
    let arrivals = rows
        .into_iter()
        .map(|(at, ended)| {
            let end = ended.unwrap_or(until).min(until).max(at);
            Arrival {
                at: at.timestamp(),
                duration_s: (end - at).num_seconds().max(1),
            }
        })
        .collect();
    Ok(Trace {
        name: region.to_owned(),
        start: since.timestamp(),
        end: until.timestamp(),
        score_from: (until - Duration::days(1)).max(since).timestamp(),
        arrivals,
    })
}
