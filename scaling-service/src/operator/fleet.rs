//! What the operator sees of the fleet: regions, hosts, sessions, recent
//! endings, launches and the sampled history. One query per view, shared by
//! the JSON API and the dashboard.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Most rows a list returns (the sessions list has filters for the rest).
pub(crate) const LIST_LIMIT: i64 = 500;

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct RegionRow {
    pub name: String,
    pub enabled: bool,
    pub target_free_slots: i32,
    pub max_hosts: i32,
    pub purchase: String,
    /// Hosts per status, e.g. {"ACTIVE": 3, "DRAINING": 1}.
    pub hosts: serde_json::Value,
    pub free_slots: i64,
    pub capacity: i64,
    pub sessions: i64,
    /// Instances asked of the cloud that have not registered yet.
    pub launching: i64,
    pub current_image: Option<String>,
    pub deploy_state: Option<String>,
    pub deploy_image: Option<String>,
    pub deploy_released: Option<bool>,
}

pub(crate) async fn regions(db: &PgPool) -> Result<Vec<RegionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.name, r.enabled, r.target_free_slots, r.max_hosts, r.purchase, \
                coalesce((SELECT jsonb_object_agg(status, n) FROM \
                    (SELECT status::text AS status, count(*) AS n FROM hosts \
                     WHERE region = r.name AND status <> 'TERMINATED' GROUP BY status) c), '{}'::jsonb) AS hosts, \
                coalesce((SELECT sum(free_slots) FROM hosts WHERE region = r.name AND status = 'ACTIVE'), 0)::bigint AS free_slots, \
                coalesce((SELECT sum(capacity) FROM hosts WHERE region = r.name AND status = 'ACTIVE'), 0)::bigint AS capacity, \
                (SELECT count(*) FROM sessions s JOIN hosts h ON h.id = s.host_id \
                 WHERE h.region = r.name AND s.user_id IS NOT NULL) AS sessions, \
                (SELECT count(*) FROM hosts WHERE region = r.name AND status IN ('LAUNCHING', 'PRE_CONNECTION')) AS launching, \
                (SELECT image_id FROM images WHERE region = r.name AND status = 'CURRENT') AS current_image, \
                d.state::text AS deploy_state, d.image_id AS deploy_image, d.released_at IS NOT NULL AS deploy_released \
         FROM regions r \
         LEFT JOIN deploys d ON d.region = r.name AND d.state IN ('BUFFERING', 'READY') \
         ORDER BY r.name",
    )
    .fetch_all(db)
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct HostRow {
    pub id: String,
    pub region: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub instance_type: String,
    pub image_id: String,
    pub host_version: Option<String>,
    pub capacity: i32,
    pub free_slots: i32,
    pub sessions: i64,
    pub load_average: Option<f32>,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_s: Option<f64>,
    pub launched_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub(crate) struct HostFilter {
    pub region: Option<String>,
    pub status: Option<String>,
}

pub(crate) async fn hosts(db: &PgPool, filter: &HostFilter) -> Result<Vec<HostRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.id, h.region, h.status::text AS status, h.status_reason, h.instance_type, h.image_id, \
                h.host_version, h.capacity, h.free_slots, \
                (SELECT count(*) FROM sessions s WHERE s.host_id = h.id AND s.user_id IS NOT NULL) AS sessions, \
                h.load_average, extract(epoch FROM now() - h.last_heartbeat_at)::float8 AS heartbeat_age_s, h.launched_at \
         FROM hosts h \
         WHERE h.status <> 'TERMINATED' AND ($1::text IS NULL OR h.region = $1) \
           AND ($2::text IS NULL OR h.status::text = $2) \
         ORDER BY h.region, h.launched_at, h.id LIMIT $3",
    )
    .bind(&filter.region)
    .bind(&filter.status)
    .bind(LIST_LIMIT)
    .fetch_all(db)
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct SessionRow {
    pub id: Uuid,
    pub user_id: Option<String>,
    pub runtime: String,
    pub status: String,
    pub host_id: String,
    pub region: String,
    pub created_at: DateTime<Utc>,
    pub allocated_at: Option<DateTime<Utc>>,
    /// Seconds since it was handed out (or made, for a warm one).
    pub age_s: f64,
}

#[derive(Debug, Default)]
pub(crate) struct SessionFilter {
    pub region: Option<String>,
    pub user: Option<String>,
    pub runtime: Option<String>,
    pub status: Option<String>,
    pub host: Option<String>,
    /// Warm (unassigned) sessions too.
    pub include_warm: bool,
}

pub(crate) async fn sessions(
    db: &PgPool,
    filter: &SessionFilter,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.user_id, s.runtime, s.status::text AS status, s.host_id, h.region, s.created_at, s.allocated_at, \
                extract(epoch FROM now() - coalesce(s.allocated_at, s.created_at))::float8 AS age_s \
         FROM sessions s JOIN hosts h ON h.id = s.host_id \
         WHERE ($1::text IS NULL OR h.region = $1) AND ($2::text IS NULL OR s.user_id = $2) \
           AND ($3::text IS NULL OR s.runtime = $3) AND ($4::text IS NULL OR s.status::text = $4) \
           AND ($5::text IS NULL OR s.host_id = $5) AND ($6 OR s.user_id IS NOT NULL) \
         ORDER BY coalesce(s.allocated_at, s.created_at) DESC, s.id LIMIT $7",
    )
    .bind(&filter.region)
    .bind(&filter.user)
    .bind(&filter.runtime)
    .bind(&filter.status)
    .bind(&filter.host)
    .bind(filter.include_warm)
    .bind(LIST_LIMIT)
    .fetch_all(db)
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct EndingRow {
    pub id: Uuid,
    pub user_id: String,
    pub runtime: String,
    pub host_id: String,
    pub outcome: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

pub(crate) async fn endings(db: &PgPool, limit: i64) -> Result<Vec<EndingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, runtime, host_id, outcome::text AS outcome, reason, created_at, ended_at \
         FROM session_history ORDER BY ended_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct LaunchRow {
    pub id: Uuid,
    pub region: String,
    pub instance_type: String,
    pub image_id: String,
    pub count: i32,
    pub state: String,
    pub instance_ids: Vec<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub(crate) async fn launches(db: &PgPool, limit: i64) -> Result<Vec<LaunchRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, region, instance_type, image_id, count, state::text AS state, instance_ids, error, created_at \
         FROM launches ORDER BY created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub(crate) struct Sample {
    pub region: String,
    pub at: DateTime<Utc>,
    pub hosts: i32,
    pub capacity: i32,
    pub free_slots: i32,
    pub sessions: i32,
    pub assigns: i32,
}

/// Samples of the last `hours`, oldest first.
pub(crate) async fn history(
    db: &PgPool,
    region: Option<&str>,
    hours: u32,
) -> Result<Vec<Sample>, sqlx::Error> {
    sqlx::query_as(
        "SELECT region, at, hosts, capacity, free_slots, sessions, assigns FROM fleet_history \
         WHERE at > now() - make_interval(hours => $1) AND ($2::text IS NULL OR region = $2) \
         ORDER BY at, region",
    )
    .bind(hours as i32)
    .bind(region)
    .fetch_all(db)
    .await
}
