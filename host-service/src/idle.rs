//! Idle reaping: a RUNNING session whose runtime has an idle timeout, with no
//! open proxy connection and no sign of use (traffic, an owner's ping, the
//! app touching `/berth/activity`) for that long, is torn down and its slot
//! freed. Its user then sees it as REAPED, with the reason.

use std::sync::Arc;
use std::time::Duration;

use crate::host::Host;
use crate::session::teardown::{spawn_teardown, Ending};

pub async fn run(host: Arc<Host>) {
    let mut tick = tokio::time::interval(Duration::from_secs(host.config.idle_check_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tick.tick() => reap_idle(&host),
        }
    }
}

fn reap_idle(host: &Arc<Host>) {
    for session in host.sessions() {
        let Some(timeout) = session.runtime.idle_timeout else {
            continue;
        };
        if session.running_owner().is_none() {
            continue;
        }
        let idle = session.activity.idle_for(&session.paths.session);
        if idle < timeout {
            continue;
        }
        host.metrics.idle_reaped.inc();
        let reason = format!(
            "idle for {}s with no connections (runtime {} reaps after {}s)",
            idle.as_secs(),
            session.runtime.name,
            timeout.as_secs()
        );
        spawn_teardown(host, session, Ending::reaped(reason));
    }
}
