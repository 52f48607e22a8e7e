//! When a RUNNING session ends on its own: idle too long (its runtime's idle
//! timeout: no open proxy connection and no sign of use — traffic, an owner's
//! ping, the app touching `/berth/activity`), or past its lifetime (its
//! runtime's `max_lifetime_s`, counted from when it was finished for its
//! user). `idle_warning_s` before either end the session is warned: the app
//! reads `/berth/warning.json`, the client `GET /sessions/<id>` here and on
//! the scheduler (`ends_at`, the reason). Use before an idle end cancels it
//! and its warning; a lifetime end does not move. A spot interruption notice
//! (see `spot`) is an end too, announced at once. The user then sees the
//! session as REAPED (idle), LIFETIME or INTERRUPTED, with the reason.

use std::sync::Arc;
use std::time::Duration;

use berth_common::host_api::EndNotice;
use chrono::{DateTime, Utc};

use crate::host::Host;
use crate::session::facts::{self, EndReason, EndWarning};
use crate::session::teardown::{spawn_teardown, Ending};
use crate::session::Session;

pub async fn run(host: Arc<Host>) {
    let mut tick = tokio::time::interval(Duration::from_secs(host.config.idle_check_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = host.stop.cancelled() => return,
            _ = tick.tick() => check(&host),
        }
    }
}

/// The session's next end, if it has one: the earliest of its idle end (were
/// it to stay idle from now), its lifetime end and its host's interruption.
fn next_end(
    host: &Host,
    session: &Session,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, EndReason)> {
    let idle = session.runtime.idle_timeout.and_then(|timeout| {
        let idle = session.activity.idle_for(&session.paths.session);
        let left = chrono::Duration::from_std(timeout.saturating_sub(idle)).ok()?;
        Some((now + left, EndReason::Idle))
    });
    let lifetime = session
        .lifetime_ends_at()
        .map(|at| (at, EndReason::Lifetime));
    let interruption = host.interruption().map(|at| (at, EndReason::Interruption));
    [idle, lifetime, interruption]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
}

fn check(host: &Arc<Host>) {
    let now = Utc::now();
    for session in host.sessions() {
        if session.running_owner().is_none() {
            continue;
        }
        let Some((at, reason)) = next_end(host, &session, now) else {
            continue;
        };
        if at <= now {
            end(host, session, reason);
            continue;
        }
        let warn_ahead = session
            .runtime
            .end_warning
            .and_then(|w| chrono::Duration::from_std(w).ok());
        // An interruption is announced as soon as it is known.
        let warning = warn_ahead
            .filter(|ahead| at - now <= *ahead)
            .or((reason == EndReason::Interruption).then(chrono::Duration::zero))
            .map(|_| EndWarning {
                // Announced to the second: an idle end re-computed every
                // tick does not look like a new one.
                ends_at: DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at),
                reason,
                message: match reason {
                    EndReason::Idle => "the session ends if it stays idle; any use keeps it".into(),
                    EndReason::Lifetime => "the session reaches its maximum lifetime".into(),
                    EndReason::Interruption => {
                        "EC2 is taking this host back (spot interruption); save your work".into()
                    }
                },
            });
        // An idle end is re-computed every tick from two clocks: within a
        // second of the one announced, it is the same end.
        let same = |a: &EndWarning, b: &EndWarning| {
            a.reason == b.reason && (a.ends_at - b.ends_at).num_seconds().abs() <= 1
        };
        let announced = session.warning();
        if let (Some(new), Some(old)) = (&warning, &announced) {
            if same(new, old) {
                continue;
            }
        }
        announce(host, &session, warning);
    }
}

fn end(host: &Arc<Host>, session: Arc<Session>, reason: EndReason) {
    let rt = &session.runtime;
    let ending = match reason {
        EndReason::Idle => {
            host.metrics.idle_reaped.inc();
            let idle = session.activity.idle_for(&session.paths.session);
            Ending::reaped(format!(
                "idle for {}s with no connections (runtime {} reaps after {}s)",
                idle.as_secs(),
                rt.name,
                rt.idle_timeout.unwrap_or_default().as_secs()
            ))
        }
        EndReason::Lifetime => Ending::lifetime(format!(
            "reached its maximum lifetime of {}s (runtime {})",
            rt.max_lifetime.unwrap_or_default().as_secs(),
            rt.name
        )),
        EndReason::Interruption => Ending::interrupted(format!(
            "host {} was taken back by EC2 (spot interruption at {})",
            host.id,
            host.interruption()
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        )),
    };
    spawn_teardown(host, session, ending);
}

/// Tells the app and the control plane when the announced end changed
/// (a new warning, or one withdrawn because the session was used).
fn announce(host: &Arc<Host>, session: &Arc<Session>, warning: Option<EndWarning>) {
    if !session.replace_warning(warning.clone()) {
        return;
    }
    let (host, session) = (host.clone(), session.clone());
    host.clone().tasks.spawn(async move {
        let dir = session.paths.facts.clone();
        let written = {
            let warning = warning.clone();
            tokio::task::spawn_blocking(move || facts::write_warning(&dir, warning.as_ref())).await
        };
        if let Ok(Err(error)) | Err(error) = written.map_err(std::io::Error::other) {
            tracing::warn!(session = %session.id, %error, "writing the session's warning.json failed");
        }
        let notice = EndNotice {
            ends_at: warning.as_ref().map(|w| w.ends_at),
            reason: warning.as_ref().map(|w| w.reason.as_str().to_owned()),
            message: warning.as_ref().map(|w| w.message.clone()),
        };
        let told = host
            .control
            .until_accepted("announcing a session's end", &host.stop, || {
                host.control.warn_end(session.id, &notice)
            })
            .await;
        if let Err(error) = told {
            tracing::warn!(session = %session.id, %error, "the control plane was not told of the session's coming end");
        }
    });
}
