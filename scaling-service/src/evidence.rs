//! How long this scaler has been able to see heartbeats. A heartbeat's age is
//! evidence of a dead host only for time the scaler itself was connected to the
//! database and in charge of the region: after its own outage, a restart, a
//! failover or a change of the region's controller, every host starts a fresh
//! grace. Without this, the first liveness pass after a database blip reads
//! every heartbeat as stale and condemns a healthy fleet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the database is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Evidence {
    /// Since when the database has answered without a gap; `None` while it does not.
    connected_since: Mutex<Option<Instant>>,
    /// Since when this replica has controlled each region.
    leading_since: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            connected_since: Mutex::new(Some(Instant::now())),
            leading_since: Mutex::new(HashMap::new()),
        }
    }
}

impl Evidence {
    /// The database answered.
    pub fn connected(&self) {
        lock(&self.connected_since).get_or_insert_with(Instant::now);
    }

    /// The database did not answer: nothing seen until it does again counts.
    pub fn disconnected(&self) {
        if lock(&self.connected_since).take().is_some() {
            tracing::warn!("lost the database; heartbeat ages stop counting until it is back");
        }
    }

    /// Something may have been missed (a LISTEN reconnected): count from now.
    pub fn gap(&self) {
        *lock(&self.connected_since) = Some(Instant::now());
    }

    pub fn leading(&self, region: &str) {
        lock(&self.leading_since)
            .entry(region.to_owned())
            .or_insert_with(Instant::now);
    }

    pub fn not_leading(&self, region: &str) {
        lock(&self.leading_since).remove(region);
    }

    /// For how long silence in `region` is evidence. A pass run outside a
    /// controller (tests, tools) is bounded by the connection alone.
    pub fn watched_for(&self, region: &str) -> Duration {
        let connected = lock(&self.connected_since).map_or(Duration::ZERO, |t| t.elapsed());
        let leading = lock(&self.leading_since)
            .get(region)
            .map_or(Duration::MAX, |t| t.elapsed());
        connected.min(leading)
    }
}

/// Probes the database every second so that even an outage shorter than a
/// controller tick resets the evidence clock.
pub async fn watch_database(evidence: Arc<Evidence>, db: PgPool, stop: CancellationToken) {
    loop {
        let probe = sqlx::query("SELECT 1").execute(&db);
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => evidence.connected(),
            _ => evidence.disconnected(),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

/// A region's hosts that are silent right now, and whether so many went silent
/// together that silence is not evidence of anything but a shared fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Silence {
    pub silent_hosts: i64,
    pub live_hosts: i64,
    pub mass_silence_suspected: bool,
}

impl Silence {
    /// A single silent host is never a mass event; above `percent` of the
    /// region's live hosts (and at least two), silence is suspect.
    pub fn judge(silent_hosts: i64, live_hosts: i64, percent: u8) -> Self {
        let mass = silent_hosts >= 2 && silent_hosts * 100 > i64::from(percent) * live_hosts;
        Self {
            silent_hosts,
            live_hosts,
            mass_silence_suspected: mass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_silent_host_is_never_a_mass_event() {
        assert!(!Silence::judge(1, 2, 30).mass_silence_suspected);
        assert!(!Silence::judge(1, 1, 30).mass_silence_suspected);
    }

    #[test]
    fn more_than_the_share_together_is_suspect() {
        assert!(Silence::judge(2, 4, 30).mass_silence_suspected);
        assert!(!Silence::judge(2, 10, 30).mass_silence_suspected);
        assert!(Silence::judge(4, 10, 30).mass_silence_suspected);
        assert!(!Silence::judge(3, 10, 30).mass_silence_suspected);
    }

    #[test]
    fn silence_counts_only_while_connected_and_leading() {
        let evidence = Evidence::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(evidence.watched_for("r") >= Duration::from_millis(20));
        evidence.disconnected();
        assert_eq!(evidence.watched_for("r"), Duration::ZERO);
        evidence.connected();
        assert!(evidence.watched_for("r") < Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(20));
        evidence.leading("r");
        assert!(evidence.watched_for("r") < Duration::from_millis(20));
        assert!(evidence.watched_for("other") >= Duration::from_millis(20));
    }
}
