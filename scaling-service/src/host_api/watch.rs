//! `GET /v1/host/watch`: desired state pushed to hosts as server-sent events.
//! The first event is a snapshot read after the stream is subscribed (so
//! nothing falls between the two); then what the replica's one LISTEN
//! connection hears for that host, and keep-alives. Whenever that LISTEN
//! connection comes back after a drop, every stream gets a fresh snapshot:
//! notifications sent meanwhile are lost, the rows are not.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_common::db::{Hint, HintListener};
use berth_common::host_api::{HostState, SessionState, WatchEvent};
use berth_common::http::{ApiError, StreamingBody};
use berth_common::{HostId, HostStatus, SessionId, SessionStatus};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{database_error, CallingHost};
use crate::scaler::Scaler;

/// A stream with nothing to say still says this often that it lives (and
/// a host that hears nothing for three times this reconnects).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Events queued for one stream before it is cut (its host reconnects and
/// re-syncs from a snapshot; nothing is lost but time).
const QUEUE: usize = 64;

#[derive(Debug)]
enum Push {
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
enum Via {
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

    fn subscribe(self: &Arc<Self>, host: &HostId) -> Subscription {
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
    fn first_telling(&self, state: &SessionState, via: Via) -> bool {
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

    fn holds(&self, host: &HostId) -> bool {
        self.lock().contains_key(host)
    }

    /// Streams held, for metrics and tests.
    pub(crate) fn streams(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn push(&self, host: Option<&HostId>, push: impl Fn() -> Push) {
        let mut streams = self.lock();
        let deliver = |senders: &mut Senders| {
            // A stream whose queue is full is cut: its host re-syncs.
            senders.retain(|(_, tx)| tx.try_send(push()).is_ok());
        };
        match host {
            Some(host) => {
                if let Some(senders) = streams.get_mut(host) {
                    deliver(senders);
                }
            }
            None => streams.values_mut().for_each(deliver),
        }
        streams.retain(|_, senders| !senders.is_empty());
    }
}

struct Subscription {
    hub: Arc<Hub>,
    host: HostId,
    key: u64,
    rx: mpsc::Receiver<Push>,
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

/// A `host_events` payload (see the migrations' notify triggers).
#[derive(Debug, Deserialize)]
struct HostHint {
    kind: String,
    host: HostId,
    id: Option<SessionId>,
    status: Option<String>,
    user_id: Option<String>,
    token_sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigHint {
    kind: String,
    key: Option<String>,
}

fn event_of(hint: HostHint) -> Option<(HostId, WatchEvent)> {
    let event = match (hint.kind.as_str(), hint.status.as_deref()) {
        ("session", Some("DELETED")) => WatchEvent::SessionDeleted { id: hint.id? },
        ("session", Some(status)) => WatchEvent::Session(SessionState {
            id: hint.id?,
            status: status.parse::<SessionStatus>().ok()?,
            user_id: hint.user_id,
            token_sha256: hint.token_sha256,
        }),
        ("host", Some("DELETED")) => WatchEvent::Host { status: None },
        ("host", Some(status)) => WatchEvent::Host {
            status: Some(status.parse::<HostStatus>().ok()?),
        },
        _ => return None,
    };
    Some((hint.host, event))
}

/// The replica's one LISTEN connection, fanned out to its streams.
pub(crate) async fn run(scaler: Arc<Scaler>) {
    let Some(mut listener) =
        HintListener::connect_until_stopped(&scaler.db, &["host_events", "config"], &scaler.stop)
            .await
    else {
        return;
    };
    loop {
        let hint = tokio::select! {
            _ = scaler.stop.cancelled() => return,
            hint = listener.recv() => hint,
        };
        match hint {
            Hint::Resync => scaler.hub.push(None, || Push::Resync),
            Hint::Notification { channel, payload } if channel == "host_events" => {
                match serde_json::from_str::<HostHint>(&payload)
                    .ok()
                    .and_then(event_of)
                {
                    Some((host, event)) => {
                        let first = match &event {
                            WatchEvent::Session(state) if scaler.hub.holds(&host) => {
                                scaler.hub.first_telling(state, Via::Notify)
                            }
                            _ => true,
                        };
                        if first {
                            scaler.hub.push(Some(&host), || Push::Event(event.clone()))
                        }
                    }
                    None => tracing::warn!(payload, "ignoring a malformed host event"),
                }
            }
            Hint::Notification { payload, .. } => {
                if let Ok(ConfigHint {
                    kind,
                    key: Some(name),
                }) = serde_json::from_str(&payload)
                {
                    if kind == "runtimes" {
                        scaler.hub.push(None, || {
                            Push::Event(WatchEvent::Runtime { name: name.clone() })
                        });
                    }
                }
            }
        }
    }
}

async fn snapshot(scaler: &Scaler, host: &HostId) -> Result<WatchEvent, sqlx::Error> {
    let host_state: HostState =
        sqlx::query_as("SELECT status, free_slots FROM hosts WHERE id = $1")
            .bind(host)
            .fetch_one(&scaler.db)
            .await?;
    Ok(WatchEvent::Snapshot {
        host: host_state,
        sessions: super::reports::session_states(&scaler.db, host).await?,
    })
}

fn frame(event: &WatchEvent) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!("event: {}\ndata: {data}\n\n", event.name()))
}

struct Stream {
    scaler: Arc<Scaler>,
    host: HostId,
    subscription: Subscription,
    first: Option<Bytes>,
    keep_alive: tokio::time::Interval,
}

/// `GET /v1/host/watch` for the calling host.
pub(crate) async fn stream(
    scaler: &Arc<Scaler>,
    host: CallingHost,
) -> Result<Response<StreamingBody>, ApiError> {
    let subscription = scaler.hub.subscribe(&host.id);
    let first = snapshot(scaler, &host.id)
        .await
        .map_err(|e| database_error("reading the host's snapshot", e))?;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    let state = Stream {
        scaler: scaler.clone(),
        host: host.id,
        subscription,
        first: Some(frame(&first)),
        keep_alive,
    };
    let frames = futures_util::stream::unfold(state, |mut s| async move {
        if let Some(first) = s.first.take() {
            return Some((Ok::<_, Infallible>(Frame::data(first)), s));
        }
        let push = tokio::select! {
            _ = s.scaler.stop.cancelled() => return None,
            push = s.subscription.rx.recv() => push?,
            _ = s.keep_alive.tick() => return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), s)),
        };
        let bytes = match push {
            Push::Event(event) => frame(&event),
            Push::Resync => match snapshot(&s.scaler, &s.host).await {
                Ok(event) => frame(&event),
                // The host reconnects and gets its snapshot then.
                Err(error) => {
                    tracing::warn!(host = %s.host, %error, "re-reading a host's snapshot failed; closing its stream");
                    return None;
                }
            },
        };
        Some((Ok(Frame::data(bytes)), s))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
