//! Writes batched in memory and flushed on a timer (heartbeats, audit
//! records): one loop for all of them, so each flushes the same way — every
//! interval, once more when the service stops, a failed write kept for the
//! next round by its owner.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `flush` every `every` until `stop` (and once more then); a failed
/// flush is logged as `what` and tried again with the next round.
pub(crate) async fn flush_every<F, Fut>(
    every: Duration,
    stop: CancellationToken,
    what: &'static str,
    mut flush: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, sqlx::Error>>,
{
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = interval.tick() => false,
        };
        if let Err(error) = flush().await {
            tracing::warn!(%error, "writing a batch of {what} failed; retrying with the next");
        }
        if stopping {
            return;
        }
    }
}
