//! Docker `die` events of this host's containers: a session whose container
//! exits is torn down at once. The event stream reconnects with back-off, and
//! after each reconnect every session's container is checked, because events
//! during the gap are lost.

use std::sync::Arc;
use std::time::Duration;

use berth_common::SessionId;
use futures_util::StreamExt;

use crate::docker::LABEL_SESSION;
use crate::host::Host;
use crate::session::teardown::{spawn_teardown, Ending};

pub async fn run(host: Arc<Host>) {
    let mut pause = Duration::from_millis(250);
    loop {
        let mut deaths = Box::pin(host.docker.container_deaths(&host.id));
        check_all(&host).await;
        loop {
            let event = tokio::select! {
                _ = host.stop.cancelled() => return,
                event = deaths.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    pause = Duration::from_millis(250);
                    let session = event
                        .actor
                        .and_then(|a| a.attributes)
                        .and_then(|attrs| {
                            attrs
                                .get(LABEL_SESSION)
                                .and_then(|id| id.parse::<SessionId>().ok())
                        })
                        .and_then(|id| host.session(id));
                    if let Some(session) = session {
                        spawn_teardown(&host, session, Ending::ended("its container exited"));
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "Docker event stream failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn check_all(host: &Arc<Host>) {
    for session in host.sessions() {
        if let Ok(false) = host.docker.is_running(&session.container_id).await {
            spawn_teardown(
                host,
                session,
                Ending::ended("its container is no longer running"),
            );
        }
    }
}
