//! `GET /v1/host/watch`: desired state pushed to hosts as server-sent events.
//! The first event is a snapshot read after the stream is subscribed (so
//! nothing falls between the two); then what the replica's one LISTEN
//! connection hears for that host, and keep-alives. Whenever that LISTEN
//! connection comes back after a drop, every stream gets a fresh snapshot:
//! notifications sent meanwhile are lost, the rows are not.

use std::sync::Arc;
use std::time::Duration;

use berth_common::db::{Hint, HintListener};
use berth_common::host_api::{SessionState, WatchEvent};
use berth_common::http::{ApiError, StreamingBody};
use berth_common::{HostId, HostStatus, SessionId, SessionStatus};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;

use super::hub::{Push, Subscription, Via};
use super::{database_error, CallingHost};
use crate::scaler::Scaler;

/// A stream with nothing to say still says this often that it lives (and
/// a host that hears nothing for three times this reconnects).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

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
            Hint::Resync => {
                // Changes may have gone unheard while the connection was down.
                scaler.credentials.forget_all();
                scaler.hub.push(None, || Push::Resync)
            }
            Hint::Notification { channel, payload } if channel == "host_events" => {
                let hint = serde_json::from_str::<HostHint>(&payload).ok();
                if let Some(hint) = hint.as_ref().filter(|h| h.kind != "session") {
                    // A host's credential or status moved: check its credentials again.
                    scaler.credentials.forget_host(&hint.host);
                }
                if hint.as_ref().is_some_and(|h| h.kind == "credential") {
                    continue;
                }
                match hint.and_then(event_of) {
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
    let host_state = super::host_state(&scaler.db, host)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
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
            return Some((Ok::<_, berth_common::http::BoxError>(Frame::data(first)), s));
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
