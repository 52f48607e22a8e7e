//! Finishing an allocated session for its user: claim it (ALLOCATED →
//! CONNECTING, one guarded report to the control plane), accept exactly one json_transport with the
//! session's token, write config.json atomically, wait for the app, mark
//! RUNNING. Timeouts tear the session down and free its slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_common::atomic_file::replace;
use berth_common::auth::{token_matches, token_sha256_hex};
use berth_common::host_api::SessionState;
use berth_common::{SessionId, SessionStatus};

use super::teardown::{spawn_teardown, teardown, Ending};
use super::{facts, Owner, Phase, Session};
use crate::control::ControlError;
use crate::host::Host;
use crate::readiness::wait_ready;
use crate::resources::PortMapping;

/// How long a finished session's RUNNING report is repeated before the
/// session is given up (the client's json_transport waits meanwhile).
const RUNNING_REPORT_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("this token does not grant access to that session")]
    Forbidden,
    #[error("the session already received its configuration")]
    AlreadyConfigured,
    #[error("the session has ended: {0}")]
    Gone(String),
    #[error("the session's app did not become ready: {0}")]
    NotReady(String),
    #[error("the session's init call failed: {0}; the session was torn down, request a new one")]
    InitFailed(String),
    #[error("finishing the session failed: {0}; the session was torn down, request a new one")]
    Internal(String),
    /// Nothing was changed; the same call can be retried.
    #[error("checking the session's token failed: {0}; retry")]
    Unavailable(String),
}

/// Claims `session` for its user if the scaler allocated it. With `token`,
/// only an allocation made for that token is claimed (a wrong token changes
/// nothing). Returns whether this call claimed it.
pub async fn claim(
    host: &Arc<Host>,
    session: &Arc<Session>,
    token: Option<&str>,
) -> Result<bool, ControlError> {
    let _serial = session.claim_lock.lock().await;
    if !matches!(*session.phase(), Phase::Waiting) {
        return Ok(false);
    }
    let presented = token.map(token_sha256_hex);
    let claimed = host.control.claim(session.id, presented).await?;
    let Some(SessionState {
        user_id: Some(user_id),
        token_sha256: Some(token_sha256),
        ..
    }) = claimed
    else {
        return Ok(false);
    };
    crate::faults::point("claim.after_update");
    {
        let mut phase = session.phase();
        if !matches!(*phase, Phase::Waiting) {
            return Ok(false);
        }
        *phase = Phase::Connecting(Owner {
            user_id,
            token_sha256,
        });
    }
    tracing::info!(session = %session.id, "session claimed; waiting for the client's json_transport");
    host.metrics.allocations.inc();
    arm_client_timeout(host, session.clone());
    Ok(true)
}

/// No client within the timeout → teardown, so an abandoned allocation
/// cannot hold a slot forever.
pub(crate) fn arm_client_timeout(host: &Arc<Host>, session: Arc<Session>) {
    let (host2, timeout) = (host.clone(), host.config.client_timeout());
    host.tasks.spawn(async move {
        tokio::select! {
            _ = host2.stop.cancelled() => return,
            _ = tokio::time::sleep(timeout) => {}
        }
        if matches!(*session.phase(), Phase::Connecting(_)) {
            let reason = format!(
                "no json_transport from the client within {}s",
                timeout.as_secs()
            );
            teardown(&host2, &session, &Ending::failed(reason)).await;
        }
    });
}

/// What the client gets once its session runs.
#[derive(Debug)]
pub struct Finished {
    pub ports: Vec<PortMapping>,
    /// The runtime's init answer, for the owner only.
    pub init: Option<serde_json::Value>,
}

/// `PUT /json_transport`: checks the token, accepts the first call only, and
/// answers with the session's ports once the app is ready.
pub async fn json_transport(
    host: &Arc<Host>,
    id: SessionId,
    token: &str,
    json_data: String,
) -> Result<Finished, FinishError> {
    let received = Instant::now();
    let session = host.session(id).ok_or(FinishError::Forbidden)?;
    // The client may be faster than the ALLOCATED hint.
    // A failed claim changed nothing: the client may retry.
    let claimed = claim(host, &session, Some(token))
        .await
        .map_err(|e| FinishError::Unavailable(e.to_string()))?;
    // A claim made by this call compared the presented token with the row's
    // hash in the same guarded UPDATE, so re-reading the row would only repeat
    // that check. Otherwise the hint claimed it earlier and the scaler may
    // have re-issued the token since: the row decides.
    let owner = if claimed {
        session.phase().owner().cloned()
    } else {
        current_owner(host, &session)
            .await
            .map_err(|e| FinishError::Unavailable(e.to_string()))?
    };
    let owner_ok = owner.is_some_and(|o| token_matches(token, &o.token_sha256));
    {
        let mut phase = session.phase();
        match &*phase {
            Phase::Connecting(owner) if owner_ok => *phase = Phase::Finishing(owner.clone()),
            Phase::Finishing(_) | Phase::Running(_) if owner_ok => {
                return Err(FinishError::AlreadyConfigured)
            }
            Phase::Dying(_) if owner_ok => {
                return Err(FinishError::Gone("it is being torn down".into()))
            }
            _ => return Err(FinishError::Forbidden),
        }
    }
    let checked = Checked {
        received,
        check: received.elapsed(),
        claimed,
    };
    // A task of its own: a client hanging up must not stop halfway.
    let task = host.tasks.spawn(finish(
        host.clone(),
        session,
        json_data,
        token.to_owned(),
        checked,
    ));
    task.await
        .map_err(|e| FinishError::Internal(format!("finishing task ended abnormally: {e}")))?
}

/// The session's owner as the database has it now. Until the app runs, the
/// scaler re-issues the token whenever the client repeats its assign, so the
/// hash cached at claim may be stale either way (an old token must stop
/// working, a new one must start); once RUNNING the token no longer changes.
pub async fn current_owner(host: &Host, session: &Session) -> Result<Option<Owner>, ControlError> {
    {
        let phase = session.phase();
        if !matches!(&*phase, Phase::Connecting(_) | Phase::Finishing(_)) {
            return Ok(phase.owner().cloned());
        }
    }
    let stored = host
        .control
        .session(session.id)
        .await?
        .filter(|row| row.status == SessionStatus::Connecting)
        .and_then(|row| row.token_sha256);
    let mut phase = session.phase();
    if let (Some(stored), Phase::Connecting(owner) | Phase::Finishing(owner)) =
        (stored, &mut *phase)
    {
        owner.token_sha256 = stored;
    }
    Ok(phase.owner().cloned())
}

/// When json_transport got the request and what checking its token took,
/// so the RUNNING log line accounts for the host's whole share of the call.
struct Checked {
    received: Instant,
    check: Duration,
    /// This call claimed the session (it beat the ALLOCATED hint).
    claimed: bool,
}

/// Milliseconds with 0.1 ms resolution, for log fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

async fn finish(
    host: Arc<Host>,
    session: Arc<Session>,
    json_data: String,
    token: String,
    checked: Checked,
) -> Result<Finished, FinishError> {
    let started = Instant::now();
    if let Err(e) = attach_user_volume(&host, &session) {
        spawn_teardown(&host, session, Ending::failed(format!("user volume: {e}")));
        return Err(FinishError::Internal(format!(
            "mounting the user's data: {e}"
        )));
    }
    let path = session.paths.config_json();
    let facts = session_facts(&host, &session);
    session.set_lifetime_ends_at(facts.deadlines.lifetime_ends_at);
    let facts_dir = session.paths.facts.clone();
    // Off the runtime's threads: an fsync can take tens of milliseconds.
    // The app's facts come first, so an app that waits for config.json
    // finds them there.
    let written = tokio::task::spawn_blocking(move || {
        facts::write_session(&facts_dir, &facts)?;
        replace(&path, json_data.as_bytes(), 0o644)
    })
    .await;
    let replaced = match joined(written) {
        Ok(replaced) => replaced,
        Err(e) => {
            spawn_teardown(
                &host,
                session,
                Ending::failed(format!("writing config.json failed: {e}")),
            );
            return Err(FinishError::Internal(format!("writing config.json: {e}")));
        }
    };
    crate::faults::point("finish.after_config");
    let configured = Instant::now();
    // The app can read config.json from here on. Making its rename durable
    // (the directory's fsync) overlaps the wait for the app instead of
    // delaying it; RUNNING still waits for both.
    let durable = tokio::task::spawn_blocking(move || replaced.sync());
    let rt = &session.runtime;
    let probes = match wait_ready(
        &rt.readiness,
        session.container_ip,
        &session.paths.session,
        rt.ready_timeout,
    )
    .await
    {
        Ok(probes) => probes,
        Err(e) => {
            spawn_teardown(
                &host,
                session,
                Ending::failed(format!("app not ready: {e}")),
            );
            return Err(FinishError::NotReady(e.to_string()));
        }
    };
    if let Err(e) = joined(durable.await) {
        spawn_teardown(
            &host,
            session,
            Ending::failed(format!("writing config.json failed: {e}")),
        );
        return Err(FinishError::Internal(format!("writing config.json: {e}")));
    }
    let ready = Instant::now();
    let (init, sealed) = match run_init(&session, &token).await {
        Ok(answer) => answer,
        Err(e) => {
            spawn_teardown(&host, session, Ending::failed(e.to_string()));
            return Err(FinishError::InitFailed(e.to_string()));
        }
    };
    let initialized = Instant::now();
    // The client waits for this answer: a control plane away for a few
    // seconds costs a few seconds, not the session.
    let marked = tokio::time::timeout(
        RUNNING_REPORT_PATIENCE,
        host.control
            .until_accepted("marking a session RUNNING", &host.stop, || {
                host.control.running(session.id, sealed.as_deref())
            }),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ControlError::Refused {
            doing: "marking a session RUNNING",
            status: 503,
            code: "TIMEOUT".into(),
            message: format!(
                "not accepted within {} s",
                RUNNING_REPORT_PATIENCE.as_secs()
            ),
        })
    });
    match marked {
        Ok(true) => crate::faults::point("finish.after_running"),
        Ok(false) => return Err(FinishError::Gone("it was ended while starting".into())),
        Err(e) => {
            spawn_teardown(
                &host,
                session,
                Ending::failed(format!("marking RUNNING failed: {e}")),
            );
            return Err(FinishError::Internal(format!(
                "marking the session RUNNING: {e}"
            )));
        }
    }
    {
        let mut phase = session.phase();
        match &*phase {
            Phase::Finishing(owner) => *phase = Phase::Running(owner.clone()),
            _ => return Err(FinishError::Gone("it was ended while starting".into())),
        }
    }
    // Idle time counts from when the user could first use it.
    session.activity.touch();
    host.metrics
        .ready_seconds
        .observe(started.elapsed().as_secs_f64());
    // `ms` is the host's whole share of the client's call, from the request
    // to RUNNING; the stages: the token check (with the claim when the client
    // beat the hint), task start, config.json in place, readiness (with the
    // directory fsync it overlaps), init, RUNNING row.
    let done = Instant::now();
    tracing::info!(
        session = %session.id,
        ms = ms(done - checked.received),
        check_ms = ms(checked.check),
        claimed_here = checked.claimed,
        start_ms = ms(started - (checked.received + checked.check)),
        config_ms = ms(configured - started),
        ready_ms = ms(ready - configured),
        probes,
        init_ms = ms(initialized - ready),
        mark_ms = ms(done - initialized),
        "session RUNNING"
    );
    Ok(Finished {
        ports: session.ports.clone(),
        init,
    })
}

/// A blocking task's result, its panic or cancellation as an error.
fn joined<T>(r: Result<std::io::Result<T>, tokio::task::JoinError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

/// Mounts the owner's persistent directory on the session's mount point
/// (visible in the container at the runtime's path) before the app sees
/// its config.
fn attach_user_volume(host: &Host, session: &Session) -> Result<(), String> {
    let Some(volume) = &session.runtime.user_volume else {
        return Ok(());
    };
    let (Some(data), Some(owner)) = (&host.user_data, session.phase().owner().cloned()) else {
        return Err("this host has no BERTH_USER_DATA_ROOT".into());
    };
    data.attach(&owner.user_id, volume, &session.paths.volume)
        .map_err(|e| e.to_string())
}

/// Calls the runtime's init endpoint, if any: its answer, and the answer
/// sealed under the session token for the row.
async fn run_init(
    session: &Session,
    token: &str,
) -> Result<(Option<serde_json::Value>, Option<Vec<u8>>), super::init::InitError> {
    let rt = &session.runtime;
    let Some(call) = &rt.init else {
        return Ok((None, None));
    };
    let user_id = session.phase().owner().map(|o| o.user_id.clone());
    let params = serde_json::json!({
        "session_id": session.id,
        "user_id": user_id,
        "runtime": rt.name,
        "ports": session.ports,
    });
    let answer = super::init::call(call, session.container_ip, &params, rt.ready_timeout).await?;
    let sealed =
        super::init::seal(token, session.id, answer.to_string().as_bytes()).ok_or_else(|| {
            super::init::InitError::Failed {
                path: call.path.clone(),
                why: "sealing the answer failed (system RNG)".into(),
            }
        })?;
    Ok((Some(answer), Some(sealed)))
}

/// What the session's app reads in `/berth/session.json`. Its lifetime counts
/// from now, when it is finished for its user.
fn session_facts(host: &Host, session: &Session) -> facts::SessionFacts {
    let rt = &session.runtime;
    let user_id = session
        .phase()
        .owner()
        .map(|o| o.user_id.clone())
        .unwrap_or_default();
    let lifetime_ends_at = rt.max_lifetime.and_then(|lifetime| {
        chrono::Duration::from_std(lifetime)
            .ok()
            .map(|d| chrono::Utc::now() + d)
    });
    facts::SessionFacts {
        session_id: session.id,
        runtime: rt.name.clone(),
        user_id,
        host_id: host.id.to_string(),
        region: host.region.clone(),
        ports: session.ports.clone(),
        tty: session.tty,
        devices: session.input_event_nodes(),
        gpus: session.gpus.clone(),
        deadlines: facts::Deadlines {
            idle_timeout_s: rt.idle_timeout.map(|d| d.as_secs()),
            idle_warning_s: rt.end_warning.map(|d| d.as_secs()),
            max_lifetime_s: rt.max_lifetime.map(|d| d.as_secs()),
            lifetime_ends_at,
        },
    }
}
