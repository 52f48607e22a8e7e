//! This replica's publisher of the hints the database queues (see
//! `berth_common::db::publish_queued_hints`): right after a write of its own
//! that queued some (an assign, a session's end), and every `POLL` for the
//! writes of others (another replica's sweeps, an operator's command).

use std::sync::Arc;
use std::time::Duration;

use crate::scaler::Scaler;

/// The longest a hint written elsewhere waits in the queue.
const POLL: Duration = Duration::from_millis(20);
/// After a failed publish (the database away), before the next try.
const RETRY: Duration = Duration::from_millis(500);

pub(crate) async fn publish(scaler: Arc<Scaler>) {
    loop {
        let stopping = tokio::select! {
            _ = scaler.stop.cancelled() => true,
            _ = scaler.hints_queued.notified() => false,
            _ = tokio::time::sleep(POLL) => false,
        };
        match berth_common::db::publish_queued_hints(&scaler.db).await {
            Ok(published) => {
                scaler.metrics.hints_published.inc_by(published as u64);
            }
            Err(error) => {
                tracing::warn!(%error, "publishing queued hints failed; retrying");
                tokio::select! {
                    _ = scaler.stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
        if stopping {
            return;
        }
    }
}
