//! Draining ends the host: warm sessions go at once, running ones may finish
//! until the deadline (then they are stopped), the row becomes TERMINATING and
//! the daemon exits 0. Started by the row turning DRAINING.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::host::Host;
use crate::session::teardown::{teardown, Ending};
use crate::session::Phase;

/// Starts the drain once; later calls do nothing.
pub fn start(host: &Arc<Host>) {
    if host.draining.send_replace(true) {
        return;
    }
    let host2 = host.clone();
    host.tasks.spawn(async move { run(host2).await });
}

async fn run(host: Arc<Host>) {
    let deadline = tokio::time::Instant::now() + host.config.drain_deadline();
    tracing::warn!(
        deadline_s = host.config.drain_deadline_secs,
        "host is DRAINING"
    );
    let warm: Vec<_> = host
        .sessions()
        .into_iter()
        .filter(|s| matches!(*s.phase(), Phase::Waiting))
        .collect();
    let draining = Ending::ended("the host is draining");
    join_all(warm.iter().map(|s| teardown(&host, s, &draining))).await;
    crate::faults::point("drain.after_warm");
    loop {
        let left = host.sessions();
        if left.is_empty() {
            break;
        }
        // Sessions of an interrupted host end at the interruption (see
        // `deadlines`); the drain waits for them, not for its own deadline.
        let deadline = match host.interruption() {
            Some(at) => {
                let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                deadline.min(tokio::time::Instant::now() + left + Duration::from_secs(5))
            }
            None => deadline,
        };
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                sessions = left.len(),
                "drain deadline reached; stopping the remaining sessions"
            );
            let deadline_passed = Ending::ended("the host's drain deadline passed");
            join_all(left.iter().map(|s| teardown(&host, s, &deadline_passed))).await;
            continue;
        }
        // A stop (SIGTERM) during a drain leaves the rest to the next start.
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = host.refill.notified() => {}
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_secs(1))) => {}
        }
    }
    crate::faults::point("drain.before_terminating");
    // The control plane terminates the instance on this report: it must arrive.
    let reported = host
        .control
        .until_accepted("marking the host TERMINATING", &host.stop, || {
            host.control.terminating()
        })
        .await;
    if let Err(error) = reported {
        tracing::error!(%error, "could not mark the host TERMINATING; the control plane's drain timeout ends it");
    }
    tracing::warn!("drained; host-service exits");
    host.drained.cancel();
    host.stop.cancel();
}
