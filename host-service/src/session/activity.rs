//! Whether anyone is using a session: open proxy connections (HTTP requests
//! in flight, WebSockets), the last byte that went through, the owner's
//! activity pings, and the app's own: it may touch `/berth/activity`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The file an app touches to say it is busy (e.g. a long computation with
/// nobody connected), relative to its session directory.
pub const ACTIVITY_FILE: &str = "activity";

#[derive(Debug)]
pub struct Activity {
    connections: AtomicUsize,
    last: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            connections: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Counts a connection until the guard drops.
    pub fn connect(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ConnectionGuard {
            activity: self.clone(),
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How long the session has been unused: zero while a connection is
    /// open, else the time since the latest sign of use (ours or the app's).
    pub fn idle_for(&self, session_dir: &Path) -> Duration {
        if self.connections() > 0 {
            return Duration::ZERO;
        }
        let ours = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        // Not followed if the app made it a symlink: only its own file counts.
        let apps = std::fs::symlink_metadata(session_dir.join(ACTIVITY_FILE))
            .and_then(|m| m.modified())
            .ok()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        apps.map_or(ours, |apps| ours.min(apps))
    }
}

/// One open connection; dropping it ends it (and counts as activity).
#[derive(Debug)]
pub struct ConnectionGuard {
    activity: Arc<Activity>,
}

impl ConnectionGuard {
    pub fn touch(&self) {
        self.activity.touch();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_keep_a_session_busy() {
        let dir = std::env::temp_dir();
        let activity = Arc::new(Activity::default());
        *activity.last.lock().unwrap() -= Duration::from_secs(100);
        assert!(activity.idle_for(&dir) >= Duration::from_secs(100));
        let guard = activity.connect();
        *activity.last.lock().unwrap() -= Duration::from_secs(100);
        assert_eq!(activity.idle_for(&dir), Duration::ZERO);
        drop(guard);
        assert!(activity.idle_for(&dir) < Duration::from_secs(1));
        assert_eq!(activity.connections(), 0);
    }

    #[test]
    fn the_apps_activity_file_counts() {
        let dir = std::env::temp_dir().join(format!("berth-activity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let activity = Activity::default();
        *activity.last.lock().unwrap() -= Duration::from_secs(100);
        std::fs::write(dir.join(ACTIVITY_FILE), b"").unwrap();
        assert!(activity.idle_for(&dir) < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
