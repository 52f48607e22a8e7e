//! Heartbeats to the control plane (jittered, so a fleet started together does not
//! beat in lockstep) and the systemd watchdog.

use std::sync::Arc;
use std::time::Duration;

use berth_common::host_api::Heartbeat;
use berth_common::HostStatus;
use rand::Rng;

use crate::drain;
use crate::host::Host;
use crate::registry;

pub async fn run(host: Arc<Host>) {
    let period = host.config.heartbeat_period();
    loop {
        let jitter = rand::thread_rng().gen_range(0.9..1.1);
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tokio::time::sleep(period.mul_f64(jitter)) => {}
        }
        let beat = Heartbeat {
            load_average: registry::load_average(),
            session_count: host.session_count() as i32,
        };
        match host.control.heartbeat(&beat).await {
            Ok(state) if matches!(state.status, HostStatus::Active | HostStatus::Unreachable) => {}
            // A missed DRAINING event is caught here at the latest.
            Ok(_) => drain::start(&host),
            Err(error) => tracing::warn!(%error, "heartbeat failed; will retry next period"),
        }
    }
}

/// Pings systemd's watchdog at half its period while the runtime is alive.
pub async fn watchdog(host: Arc<Host>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    loop {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
