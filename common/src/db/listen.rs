//! LISTEN/NOTIFY as hints. Notifications sent while the connection is down are
//! lost for good, so besides each payload the listener reports `Resync` after
//! every reconnect, and the owner re-reads the rows it cares about.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::DbError;

/// What a listener has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A notification: its channel and JSON payload.
    Notification { channel: String, payload: String },
    /// The connection was (re)established; notifications may have been missed.
    Resync,
}

#[derive(Debug)]
pub struct HintListener {
    listener: PgListener,
    resync_pending: bool,
}

/// Pause between failed reconnects, so a database outage is not a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Pause between failed first connects.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

impl HintListener {
    /// Connects and listens on `channels`. The first `recv` returns `Resync`,
    /// because nothing was heard before now.
    pub async fn connect(pool: &PgPool, channels: &[&str]) -> Result<Self, DbError> {
        let mut listener = PgListener::connect_with(pool)
            .await
            .map_err(DbError::query("opening a LISTEN connection"))?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(DbError::query("subscribing to NOTIFY channels"))?;
        Ok(Self {
            listener,
            resync_pending: true,
        })
    }

    /// [`connect`](Self::connect), retried every second until it succeeds
    /// (the database may be starting or away); `None` if `stop` comes first.
    pub async fn connect_until_stopped(
        pool: &PgPool,
        channels: &[&str],
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Self> {
        loop {
            match Self::connect(pool, channels).await {
                Ok(listener) => return Some(listener),
                Err(error) => {
                    tracing::warn!(%error, ?channels, "cannot LISTEN yet; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(CONNECT_RETRY) => {}
                    }
                }
            }
        }
    }

    /// The next hint. Never returns an error: while the database is
    /// unreachable it keeps retrying, and reports `Resync` once it is back.
    pub async fn recv(&mut self) -> Hint {
        loop {
            if self.resync_pending {
                self.resync_pending = false;
                return Hint::Resync;
            }
            match self.listener.try_recv().await {
                Ok(Some(n)) => {
                    return Hint::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    }
                }
                // The connection dropped; the next try_recv reconnects and
                // re-LISTENs, but anything sent meanwhile is gone.
                Ok(None) => self.resync_pending = true,
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; retrying");
                    self.resync_pending = true;
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    }
}
