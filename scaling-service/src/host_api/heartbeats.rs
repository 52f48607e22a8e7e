//! Heartbeats land in one statement per short interval for every host that
//! beat meanwhile, not one per host: at thousands of hosts, per-beat UPDATEs
//! would be most of the database's work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_common::HostId;

use tokio_util::sync::CancellationToken;

/// How long a heartbeat waits, at most, before it is written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub(crate) struct HeartbeatBatch {
    pending: Mutex<HashMap<HostId, Beat>>,
}

#[derive(Debug, Clone, Copy)]
struct Beat {
    load_average: Option<f32>,
    session_count: i32,
}

impl HeartbeatBatch {
    pub(crate) fn record(&self, host: HostId, load_average: Option<f32>, session_count: i32) {
        let beat = Beat {
            load_average,
            session_count,
        };
        self.lock().insert(host, beat);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Beat>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> HashMap<HostId, Beat> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back beats a failed write did not record, unless the host beat
    /// again meanwhile.
    fn restore(&self, beats: HashMap<HostId, Beat>) {
        let mut pending = self.lock();
        for (host, beat) in beats {
            pending.entry(host).or_insert(beat);
        }
    }

    /// Writes what is pending in one statement; the number of hosts written.
    pub(crate) async fn flush(&self, db: &sqlx::PgPool) -> Result<usize, sqlx::Error> {
        let beats = self.take();
        if beats.is_empty() {
            return Ok(0);
        }
        let (mut ids, mut loads, mut counts) = (vec![], vec![], vec![]);
        for (host, beat) in &beats {
            ids.push(host.to_string());
            loads.push(beat.load_average);
            counts.push(beat.session_count);
        }
        let written = sqlx::query(
            "UPDATE hosts h SET last_heartbeat_at = now(), load_average = b.load, session_count = b.sessions \
             FROM unnest($1::text[], $2::real[], $3::int[]) AS b(id, load, sessions) WHERE h.id = b.id",
        )
        .bind(&ids)
        .bind(&loads)
        .bind(&counts)
        .execute(db)
        .await;
        match written {
            Ok(_) => Ok(beats.len()),
            Err(error) => {
                self.restore(beats);
                Err(error)
            }
        }
    }
}

/// Flushes `batch` every [`FLUSH_EVERY`] until `stop` (and once more then).
pub(crate) async fn run(batch: Arc<HeartbeatBatch>, db: sqlx::PgPool, stop: CancellationToken) {
    crate::batching::flush_every(FLUSH_EVERY, stop, "heartbeats", || batch.flush(&db)).await
}
