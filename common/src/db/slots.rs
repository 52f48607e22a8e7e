//! Free slots move only through these single guarded statements (or the
//! release trigger on session delete), never read-modify-write, so concurrent
//! assigns can neither oversell a host nor push `free_slots` below zero.

use sqlx::PgExecutor;

use super::DbError;
use crate::HostId;

/// Takes one free slot on `host` if it is ACTIVE; `None` when it has none left
/// or stopped taking sessions. The status check makes a drain and an assign
/// racing on one host end consistently: whichever commits first wins.
pub async fn take_free_slot<'e>(
    db: impl PgExecutor<'e>,
    host: &HostId,
) -> Result<Option<i32>, DbError> {
    sqlx::query_scalar(
        "UPDATE hosts SET free_slots = free_slots - 1 \
         WHERE id = $1 AND free_slots > 0 AND status = 'ACTIVE' RETURNING free_slots",
    )
    .bind(host)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("taking a free slot"))
}

/// Gives one slot back to `host`, never above its capacity; `None` when the
/// host is gone or already full.
pub async fn release_free_slot<'e>(
    db: impl PgExecutor<'e>,
    host: &HostId,
) -> Result<Option<i32>, DbError> {
    sqlx::query_scalar(
        "UPDATE hosts SET free_slots = free_slots + 1 \
         WHERE id = $1 AND free_slots < capacity RETURNING free_slots",
    )
    .bind(host)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("releasing a free slot"))
}
