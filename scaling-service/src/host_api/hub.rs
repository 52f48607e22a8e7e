//! The host watch streams one replica holds, by host: where the replica's
//! LISTEN connection and its own assigns deliver events, each allocation
//! once however it arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_common::host_api::{SessionState, WatchEvent};
use berth_common::{HostId, SessionId, SessionStatus};
use tokio::sync::mpsc;

/// Events queued for one stream before it is cut (its host reconnects and
/// re-syncs from a snapshot; nothing is lost but time).
const QUEUE: usize = 64;

#[derive(Debug)]
pub(super) enum Push {
    Event(WatchEvent),
    Resync,
}

/// One host's streams on this replica (a host reconnecting may briefly hold
/// two), each with its subscription's key.
type Senders = Vec<(u64, mpsc::Sender<Push>)>;

/// The streams this replica holds, by host.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    streams: Mutex<HashMap<HostId, Senders>>,
    next: std::sync::atomic::AtomicU64,
    /// Allocations told to this replica's streams (session → token hash and
    /// how), so one told directly and through NOTIFY is sent once.
    told: Mutex<HashMap<SessionId, (String, Via)>>,
}

/// How an allocation reached this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Direct,
    Notify,
}

/// Allocations remembered for de-duplication at most; past it the memory is
/// dropped (a duplicate event costs a host nothing: claiming is idempotent).
const TOLD_MEMORY: usize = 4096;

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Senders>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn subscribe(self: &Arc<Self>, host: &HostId) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().entry(host.clone()).or_default().push((key, tx));
        Subscription {
            hub: self.clone(),
            host: host.clone(),
            key,
            rx,
        }
    }

    /// An allocation made by this replica, sent at once to the host's stream
    /// if this replica holds it (other replicas hear it through NOTIFY).
    /// Returns whether it was sent.
    pub(crate) fn allocated(&self, host: &HostId, state: SessionState) -> bool {
        if !self.holds(host) || !self.first_telling(&state, Via::Direct) {
            return false;
        }
        let event = WatchEvent::Session(state);
        self.push(Some(host), || Push::Event(event.clone()));
        true
    }

    /// Whether this is the first time this replica tells of an allocation:
    /// it is told once directly and once through NOTIFY, in either order.
    pub(super) fn first_telling(&self, state: &SessionState, via: Via) -> bool {
        let (SessionStatus::Allocated, Some(token)) = (state.status, &state.token_sha256) else {
            return true;
        };
        let mut told = self
            .told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match told.remove(&state.id) {
            Some((earlier, before)) if earlier == *token && before != via => false,
            _ => {
                if told.len() >= TOLD_MEMORY {
                    told.clear();
                }
                told.insert(state.id, (token.clone(), via));
                true
            }
        }
    }

    pub(super) fn holds(&self, host: &HostId) -> bool {
        self.lock().contains_key(host)
    }

    /// Streams held, for metrics and tests.
    pub(crate) fn streams(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub(super) fn push(&self, host: Option<&HostId>, push: impl Fn() -> Push) {
        let mut streams = self.lock();
        let deliver = |senders: &mut Senders| {
            // A stream whose queue is full is cut: its host re-syncs.
            senders.retain(|(_, tx)| tx.try_send(push()).is_ok());
        };
        // Only the entries just delivered to can have emptied: a push to one
        // host costs the same however many hosts stream.
        match host {
            Some(host) => {
                if let Some(senders) = streams.get_mut(host) {
                    deliver(senders);
                    if senders.is_empty() {
                        streams.remove(host);
                    }
                }
            }
            None => {
                streams.values_mut().for_each(deliver);
                streams.retain(|_, senders| !senders.is_empty());
            }
        }
    }
}

pub(super) struct Subscription {
    hub: Arc<Hub>,
    host: HostId,
    key: u64,
    pub(super) rx: mpsc::Receiver<Push>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut streams = self.hub.lock();
        if let Some(senders) = streams.get_mut(&self.host) {
            senders.retain(|(key, _)| *key != self.key);
            if senders.is_empty() {
                streams.remove(&self.host);
            }
        }
    }
}
