//! Hints the database's triggers queue in `hint_outbox` instead of notifying
//! inside the writing transaction: a notifying commit holds a database-wide
//! lock through its WAL flush, so one per assign serialised the assigns.
//! Publishing sends them as NOTIFYs in batches, one notifying commit each.

use sqlx::PgPool;

use super::DbError;

/// Hints one publishing statement sends at most.
const BATCH: i32 = 500;

/// Publishes every hint queued so far; answers how many. Zero as well when
/// another replica is publishing right now: it takes the queue with it.
pub async fn publish_queued_hints(pool: &PgPool) -> Result<usize, DbError> {
    let mut published = 0;
    loop {
        let sent: i32 = sqlx::query_scalar("SELECT publish_hints($1)")
            .bind(BATCH)
            .fetch_one(pool)
            .await
            .map_err(DbError::query("publishing queued hints"))?;
        if sent < 0 {
            return Ok(published);
        }
        published += sent as usize;
        if sent < BATCH {
            return Ok(published);
        }
    }
}
