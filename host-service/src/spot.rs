//! Spot interruptions. EC2 announces that it takes a spot instance back about
//! two minutes ahead, in instance metadata (`spot/instance-action`), and
//! sometimes earlier hints that it may (`events/recommendations/rebalance`).
//! On an interruption notice the host drains at once (no new sessions, the
//! scheduler replaces its capacity), every running session is warned with
//! the notice's time and ends then as INTERRUPTED (see `deadlines`). On a
//! rebalance recommendation it drains, letting running sessions finish.

use std::sync::Arc;
use std::time::Duration;

use berth_common::imds::ImdsClient;
use chrono::{DateTime, Utc};

use crate::host::Host;

const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// `spot/instance-action`: `{"action": "terminate", "time": "2026-…Z"}`.
#[derive(Debug, serde::Deserialize)]
struct InstanceAction {
    action: String,
    time: DateTime<Utc>,
}

pub async fn run(host: Arc<Host>, imds: ImdsClient, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rebalancing = false;
    loop {
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match imds.get(INSTANCE_ACTION).await {
            Ok(Some(body)) => match serde_json::from_str::<InstanceAction>(&body) {
                Ok(notice) => {
                    interrupt(&host, notice.time, &notice.action);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, body, "an unreadable spot instance-action notice")
                }
            },
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "polling the spot instance-action failed"),
        }
        if !rebalancing && matches!(imds.get(REBALANCE).await, Ok(Some(_))) {
            rebalancing = true;
            tracing::warn!("EC2 recommends rebalancing this spot instance; draining");
            drain(&host, "spot rebalance recommendation".to_owned());
        }
    }
}

fn interrupt(host: &Arc<Host>, at: DateTime<Utc>, action: &str) {
    if !host.set_interruption(at) {
        return;
    }
    let when = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tracing::warn!(
        action,
        at = when,
        "spot interruption notice: draining; sessions end then"
    );
    drain(
        host,
        format!("spot interruption: EC2 will {action} the instance at {when}"),
    );
}

/// Drains here at once and tells the control plane why, so the region's
/// buffer is replaced now rather than when the host is gone.
fn drain(host: &Arc<Host>, reason: String) {
    crate::drain::start(host);
    let host2 = host.clone();
    host.tasks.spawn(async move {
        let told = host2
            .control
            .until_accepted("marking the host DRAINING", &host2.stop, || {
                host2.control.drain(&reason)
            })
            .await;
        if let Err(error) = told {
            tracing::error!(%error, "the control plane was not told of the spot notice");
        }
    });
}
