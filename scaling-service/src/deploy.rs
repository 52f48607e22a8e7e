//! Image roll-out, persisted per region so a restart resumes it:
//! BUFFERING (launch a protected buffer of candidate hosts) → READY (buffer
//! registered; wait for the release signal) → SWAPPED (candidate becomes
//! CURRENT atomically; old hosts drain once empty). Past the deadline it is
//! FAILED and the candidate buffer drains.

use berth_common::db::DbError;
use berth_common::DeployState;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::launch;
use crate::policy::{launches_needed, RegionView};
use crate::scaler::Scaler;
use crate::state::{RegionRow, StateError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Deploy {
    pub id: Uuid,
    pub image_id: String,
    pub client_sha: String,
    pub state: DeployState,
    pub deadline_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("region {0} is unknown; insert it into regions first")]
    UnknownRegion(String),
    #[error("region {0} already has a deploy in progress; wait for it or let it fail")]
    InProgress(String),
    #[error("region {0} has no deploy ready to release")]
    NothingToRelease(String),
    #[error("region {0} has no deploy in progress to abort")]
    NothingToAbort(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

pub async fn active(db: &PgPool, region: &str) -> Result<Option<Deploy>, DbError> {
    sqlx::query_as(
        "SELECT id, image_id, client_sha, state, deadline_at, released_at FROM deploys \
         WHERE region = $1 AND state IN ('BUFFERING', 'READY')",
    )
    .bind(region)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("reading the active deploy"))
}

/// Starts a deploy: the image becomes a CANDIDATE and the region's controller
/// builds its buffer.
pub async fn start(
    db: &PgPool,
    region: &str,
    image_id: &str,
    client_sha: &str,
    timeout: std::time::Duration,
) -> Result<Uuid, DeployError> {
    let mut tx = db
        .begin()
        .await
        .map_err(DbError::query("starting a deploy"))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM regions WHERE name = $1)")
        .bind(region)
        .fetch_one(&mut *tx)
        .await
        .map_err(DbError::query("reading the region"))?;
    if !exists {
        return Err(DeployError::UnknownRegion(region.to_owned()));
    }
    sqlx::query(
        "INSERT INTO images (region, image_id, client_sha, status) VALUES ($1, $2, $3, 'CANDIDATE') \
         ON CONFLICT (region, image_id) DO UPDATE SET client_sha = $3, status = 'CANDIDATE'",
    )
    .bind(region)
    .bind(image_id)
    .bind(client_sha)
    .execute(&mut *tx)
    .await
    .map_err(DbError::query("recording the candidate image"))?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO deploys (id, region, image_id, client_sha, deadline_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(id)
    .bind(region)
    .bind(image_id)
    .bind(client_sha)
    .bind(timeout.as_secs_f64())
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(DeployError::InProgress(region.to_owned()))
        }
        other => other.map_err(DbError::query("recording the deploy"))?,
    };
    tx.commit()
        .await
        .map_err(DbError::query("committing the deploy"))?;
    Ok(id)
}

/// The release signal: a READY (or still buffering) deploy may swap.
pub async fn release(db: &PgPool, region: &str) -> Result<(), DeployError> {
    let moved = sqlx::query("UPDATE deploys SET released_at = now() WHERE region = $1 AND state IN ('BUFFERING', 'READY')")
        .bind(region)
        .execute(db)
        .await
        .map_err(DbError::query("releasing the deploy"))?;
    if moved.rows_affected() == 0 {
        return Err(DeployError::NothingToRelease(region.to_owned()));
    }
    Ok(())
}

/// Ends the region's deploy in progress as FAILED (`reason` on its row):
/// the candidate image is never swapped in and its buffer drains.
pub async fn abort(db: &PgPool, region: &str, reason: &str) -> Result<Uuid, DeployError> {
    let deploy = active(db, region)
        .await?
        .ok_or_else(|| DeployError::NothingToAbort(region.to_owned()))?;
    fail(db, region, &deploy, reason).await?;
    Ok(deploy.id)
}

/// Whether the region's latest deploy was aborted (asking again to abort it
/// is then no error).
pub async fn last_aborted(db: &PgPool, region: &str) -> Result<bool, DbError> {
    let error: Option<Option<String>> = sqlx::query_scalar(
        "SELECT error FROM deploys WHERE region = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(region)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("reading the latest deploy"))?;
    Ok(error.flatten().is_some_and(|e| e.starts_with("aborted")))
}

/// One step of the region's deploy, if one is in progress (`None`: none is,
/// and nothing was changed). Returns the images to protect from scale-down.
pub async fn step(
    scaler: &Scaler,
    region: &RegionRow,
    view: &RegionView,
) -> Result<Option<Vec<String>>, StateError> {
    let Some(deploy) = active(&scaler.db, &region.name).await? else {
        return Ok(None);
    };
    step_deploy(scaler, region, view, deploy).await.map(Some)
}

async fn step_deploy(
    scaler: &Scaler,
    region: &RegionRow,
    view: &RegionView,
    deploy: Deploy,
) -> Result<Vec<String>, StateError> {
    let db = &scaler.db;
    if Utc::now() > deploy.deadline_at {
        fail(db, &region.name, &deploy, "deadline passed before release").await?;
        return Ok(vec![]);
    }
    match deploy.state {
        DeployState::Buffering => {
            let ready_slots: i32 = view
                .hosts
                .iter()
                .filter(|h| {
                    h.image_id == deploy.image_id && h.status == berth_common::HostStatus::Active
                })
                .map(|h| h.free_slots)
                .sum();
            if ready_slots >= region.target_free_slots {
                sqlx::query(
                    "UPDATE deploys SET state = 'READY' WHERE id = $1 AND state = 'BUFFERING'",
                )
                .bind(deploy.id)
                .execute(db)
                .await
                .map_err(DbError::query("marking a deploy READY"))?;
                tracing::info!(
                    region = region.name,
                    image = deploy.image_id,
                    "deploy buffer ready; waiting for the release signal"
                );
            } else {
                let count = launches_needed(view, &deploy.image_id, region.target_free_slots);
                if count > 0 {
                    launch::launch(scaler, region, &deploy.image_id, &deploy.client_sha, count)
                        .await?;
                    crate::faults::point("deploy.after_buffer");
                }
            }
        }
        DeployState::Ready if deploy.released_at.is_some() => {
            swap(db, &region.name, &deploy).await?
        }
        _ => {}
    }
    Ok(vec![deploy.image_id])
}

async fn swap(db: &PgPool, region: &str, deploy: &Deploy) -> Result<(), DbError> {
    crate::faults::point("deploy.before_swap");
    let mut tx = db
        .begin()
        .await
        .map_err(DbError::query("swapping images"))?;
    sqlx::query("UPDATE images SET status = 'RETIRED' WHERE region = $1 AND status = 'CURRENT'")
        .bind(region)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("retiring the current image"))?;
    sqlx::query("UPDATE images SET status = 'CURRENT', activated_at = now() WHERE region = $1 AND image_id = $2")
        .bind(region)
        .bind(&deploy.image_id)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("activating the candidate image"))?;
    sqlx::query("UPDATE deploys SET state = 'SWAPPED' WHERE id = $1")
        .bind(deploy.id)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("marking the deploy SWAPPED"))?;
    tx.commit()
        .await
        .map_err(DbError::query("committing the swap"))?;
    tracing::info!(
        region,
        image = deploy.image_id,
        "deploy swapped: the candidate is CURRENT"
    );
    Ok(())
}

async fn fail(db: &PgPool, region: &str, deploy: &Deploy, reason: &str) -> Result<(), DbError> {
    let mut tx = db
        .begin()
        .await
        .map_err(DbError::query("failing a deploy"))?;
    sqlx::query("UPDATE deploys SET state = 'FAILED', error = $2 WHERE id = $1")
        .bind(deploy.id)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("marking the deploy FAILED"))?;
    sqlx::query("UPDATE images SET status = 'FAILED' WHERE region = $1 AND image_id = $2 AND status = 'CANDIDATE'")
        .bind(region)
        .bind(&deploy.image_id)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("marking the image FAILED"))?;
    sqlx::query(
        "UPDATE hosts SET status = CASE WHEN status = 'ACTIVE' THEN 'DRAINING'::host_status ELSE 'TERMINATING'::host_status END, \
                status_reason = 'deploy failed: ' || $3, draining_since = now() \
         WHERE region = $1 AND image_id = $2 AND status IN ('LAUNCHING', 'PRE_CONNECTION', 'ACTIVE')",
    )
    .bind(region)
    .bind(&deploy.image_id)
    .bind(reason)
    .execute(&mut *tx)
    .await
    .map_err(DbError::query("draining the candidate buffer"))?;
    tx.commit()
        .await
        .map_err(DbError::query("committing a failed deploy"))?;
    tracing::error!(
        region,
        image = deploy.image_id,
        reason,
        "deploy FAILED; draining its buffer"
    );
    Ok(())
}
