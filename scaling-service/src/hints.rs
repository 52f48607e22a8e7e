//! This replica's publisher of the hints the database queues (see
//! `berth_common::db::publish_queued_hints`): soon after a write of its own
//! that queued some (an assign, a session's end), and every `POLL` for the
//! writes of others (another replica's sweeps, an operator's command).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::scaler::Scaler;

/// The longest a hint written elsewhere waits in the queue.
const POLL: Duration = Duration::from_millis(20);
/// Publishes start at least this far apart: under load every assign wakes
/// the publisher, and one publish per assign would be one more notifying
/// commit per assign; this way one carries all queued meanwhile. The hosts
/// this replica streams to were told of its allocations directly already.
const MIN_GAP: Duration = Duration::from_millis(10);
/// After a failed publish (the database away), before the next try.
const RETRY: Duration = Duration::from_millis(500);

pub(crate) async fn publish(scaler: Arc<Scaler>) {
    loop {
        let stopping = tokio::select! {
            _ = scaler.stop.cancelled() => true,
            _ = scaler.hints_queued.notified() => false,
            _ = tokio::time::sleep(POLL) => false,
        };
        let started = Instant::now();
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
        tokio::select! {
            _ = scaler.stop.cancelled() => {}
            _ = tokio::time::sleep_until(started + MIN_GAP) => {}
        }
    }
}
