//! Reading a region's truth from the database for one controller pass.

use std::time::Duration;

use berth_common::db::DbError;
use berth_common::HostStatus;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::forecast::{Demand, ForecastSettings};
use crate::policy::{HostView, InFlight, RegionView};
use crate::provider::{Purchase, Selector};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegionRow {
    pub name: String,
    pub enabled: bool,
    pub target_free_slots: i32,
    pub max_hosts: i32,
    pub instance_types: Vec<String>,
    pub subnet_selectors: serde_json::Value,
    pub security_group_selectors: serde_json::Value,
    pub iam_instance_profile: Option<String>,
    pub scale_down_grace_s: i32,
    #[sqlx(try_from = "String")]
    pub purchase: Purchase,
    /// `buffer` or `forecast`.
    pub policy: String,
    pub forecast_hit_rate: f64,
    pub forecast_horizon_s: i32,
    pub forecast_period_s: i32,
    pub forecast_history_periods: i32,
    pub forecast_bucket_s: i32,
    pub forecast_recent_s: i32,
}

impl RegionRow {
    pub fn subnets(&self) -> Vec<Selector> {
        serde_json::from_value(self.subnet_selectors.clone()).unwrap_or_default()
    }
    pub fn security_groups(&self) -> Vec<Selector> {
        serde_json::from_value(self.security_group_selectors.clone()).unwrap_or_default()
    }
    /// The forecast's parameters when the region is on the forecast policy.
    pub fn forecast(&self) -> Option<ForecastSettings> {
        (self.policy == "forecast").then(|| ForecastSettings {
            hit_rate: self.forecast_hit_rate,
            horizon_s: i64::from(self.forecast_horizon_s),
            period_s: i64::from(self.forecast_period_s),
            history_periods: self.forecast_history_periods,
            bucket_s: i64::from(self.forecast_bucket_s),
            recent_s: i64::from(self.forecast_recent_s),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("region {region} lists no instance types; set regions.instance_types")]
    NoInstanceTypes { region: String },
    #[error("instance type {0} is not in the instance_types table; add it with its capacity")]
    UnknownInstanceType(String),
}

pub async fn region(db: &PgPool, name: &str) -> Result<Option<RegionRow>, DbError> {
    sqlx::query_as(
        "SELECT name, enabled, target_free_slots, max_hosts, instance_types, subnet_selectors, \
                security_group_selectors, iam_instance_profile, scale_down_grace_s, \
                purchase, policy, forecast_hit_rate, forecast_horizon_s, forecast_period_s, \
                forecast_history_periods, forecast_bucket_s, forecast_recent_s \
         FROM regions WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("reading a region"))
}

pub async fn capacity_of(db: &PgPool, instance_type: &str) -> Result<i32, StateError> {
    let capacity: Option<i32> = sqlx::query_scalar(
        "SELECT instance_capacity(capacity, vcpus, gpus) FROM instance_types WHERE name = $1",
    )
    .bind(instance_type)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("reading an instance type"))?;
    capacity.ok_or_else(|| StateError::UnknownInstanceType(instance_type.to_owned()))
}

/// The CURRENT image of a region and its client commit.
pub async fn current_image(db: &PgPool, region: &str) -> Result<Option<(String, String)>, DbError> {
    sqlx::query_as(
        "SELECT image_id, client_sha FROM images WHERE region = $1 AND status = 'CURRENT'",
    )
    .bind(region)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("reading the current image"))
}

#[derive(sqlx::FromRow)]
struct HostRow {
    id: String,
    status: HostStatus,
    image_id: String,
    capacity: i32,
    free_slots: i32,
    empty_since: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct LaunchRow {
    image_id: String,
    count: i32,
    capacity: Option<i32>,
}

pub async fn view(
    db: &PgPool,
    region: &RegionRow,
    protected_images: Vec<String>,
) -> Result<RegionView, StateError> {
    let preferred = region
        .instance_types
        .first()
        .ok_or_else(|| StateError::NoInstanceTypes {
            region: region.name.clone(),
        })?;
    let capacity_per_host = capacity_of(db, preferred).await?;
    let current_image = current_image(db, &region.name)
        .await?
        .map(|(image, _)| image);
    let hosts: Vec<HostRow> =
        sqlx::query_as("SELECT id, status, image_id, capacity, free_slots, empty_since FROM hosts WHERE region = $1")
            .bind(&region.name)
            .fetch_all(db)
            .await
            .map_err(DbError::query("reading a region's hosts"))?;
    let launches: Vec<LaunchRow> = sqlx::query_as(
        "SELECT l.image_id, l.count, instance_capacity(t.capacity, t.vcpus, t.gpus) AS capacity FROM launches l LEFT JOIN instance_types t ON t.name = l.instance_type \
         WHERE l.region = $1 AND l.state = 'PENDING'",
    )
    .bind(&region.name)
    .fetch_all(db)
    .await
    .map_err(DbError::query("reading in-flight launches"))?;
    let now = Utc::now();
    let demand = match region.forecast() {
        None => None,
        Some(settings) => Some(Demand {
            view: crate::demand::read(db, &region.name, &settings, now).await?,
            settings,
        }),
    };
    Ok(RegionView {
        target_free_slots: region.target_free_slots,
        max_hosts: region.max_hosts,
        scale_down_grace: Duration::from_secs(region.scale_down_grace_s.max(0) as u64),
        capacity_per_host,
        current_image,
        protected_images,
        hosts: hosts
            .into_iter()
            .map(|h| HostView {
                id: h.id,
                status: h.status,
                image_id: h.image_id,
                capacity: h.capacity,
                free_slots: h.free_slots,
                empty_since: h.empty_since,
            })
            .collect(),
        in_flight: launches
            .into_iter()
            .map(|l| InFlight {
                image_id: l.image_id,
                hosts: l.count,
                slots: l.count * l.capacity.unwrap_or(capacity_per_host),
            })
            .collect(),
        now,
        demand,
    })
}
