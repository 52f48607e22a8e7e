//! What an operator can change: drain a host, end a session, enable or
//! disable a region and set its buffer target and host cap, start, release or
//! abort a deploy. Each is one guarded statement (or the deploy module's
//! transaction), idempotent (asking again for what already holds answers
//! `changed: false`), and recorded in the audit trail before the answer,
//! refusals included.

use berth_common::http::ApiError;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::identity::Operator;
use crate::audit::{ActorKind, Entry, Outcome};
use crate::deploy::{self, DeployError};
use crate::scaler::Scaler;

/// What an action did.
#[derive(Debug)]
pub(crate) struct Done {
    pub changed: bool,
    pub body: Value,
}

/// One action's audit record: built as it runs, written at the end.
struct Record<'a> {
    scaler: &'a Scaler,
    entry: Entry,
}

impl<'a> Record<'a> {
    fn new(scaler: &'a Scaler, operator: &Operator, action: &'static str, target: &str) -> Self {
        let entry = Entry::new(ActorKind::Operator, &operator.subject, action, target)
            .address(operator.address.clone());
        Self { scaler, entry }
    }

    fn region(mut self, region: &str) -> Self {
        self.entry = self.entry.region(region);
        self
    }

    /// Writes the record with the result's outcome and passes the result on.
    /// An action whose record cannot be written fails: an unrecorded change
    /// is worse than a retried one (every action is idempotent).
    async fn finish(self, result: Result<Done, ApiError>) -> Result<Done, ApiError> {
        let entry = match &result {
            Ok(done) => self
                .entry
                .detail(json!({"changed": done.changed, "result": done.body})),
            Err(error) => {
                let outcome = if error.status.is_server_error() {
                    Outcome::Failed
                } else {
                    Outcome::Refused
                };
                self.entry
                    .outcome(outcome)
                    .detail(json!({"code": error.code, "message": error.message}))
            }
        };
        if let Err(error) = self.scaler.audit.write(&self.scaler.db, entry).await {
            tracing::error!(%error, "writing an operator action's audit record failed");
            return Err(internal_error());
        }
        result
    }
}

fn internal_error() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "the action could not be completed or recorded; retry (it is idempotent)",
    )
}

fn db_error(error: sqlx::Error) -> ApiError {
    tracing::error!(%error, "an operator action's query failed");
    internal_error()
}

/// `ACTIVE` → `DRAINING` (the host stops taking sessions and ends when empty).
pub(crate) async fn drain_host(
    scaler: &Scaler,
    operator: &Operator,
    host_id: &str,
) -> Result<Done, ApiError> {
    let record = Record::new(scaler, operator, "host.drain", host_id);
    if berth_common::HostId::parse(host_id.to_owned()).is_err() {
        return record
            .finish(Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such host",
            )))
            .await;
    }
    let result = async {
        let reason = format!("drained by operator {}", operator.subject);
        let row: Option<(String, String, bool)> = sqlx::query_as(
            "WITH old AS (SELECT id, region, status FROM hosts WHERE id = $1 FOR UPDATE), \
                  moved AS (UPDATE hosts h SET status = 'DRAINING', status_reason = $2, draining_since = now() \
                            FROM old WHERE h.id = old.id AND old.status IN ('ACTIVE', 'UNREACHABLE') RETURNING h.id) \
             SELECT old.region, old.status::text, EXISTS (SELECT 1 FROM moved) FROM old",
        )
        .bind(host_id)
        .bind(&reason)
        .fetch_optional(&scaler.db)
        .await
        .map_err(db_error)?;
        let Some((region, status, moved)) = row else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no host {host_id:?}")));
        };
        if moved {
            scaler.wake(&region);
            return Ok((region, Done { changed: true, body: json!({"host_id": host_id, "status": "DRAINING"}) }));
        }
        match status.as_str() {
            "DRAINING" => Ok((region, Done { changed: false, body: json!({"host_id": host_id, "status": "DRAINING"}) })),
            other => Err(ApiError::new(
                StatusCode::CONFLICT,
                "HOST_NOT_DRAINABLE",
                format!("host {host_id} is {other}: only an ACTIVE or UNREACHABLE host can be drained"),
            )),
        }
    }
    .await;
    match result {
        Ok((region, done)) => record.region(&region).finish(Ok(done)).await,
        Err(error) => record.finish(Err(error)).await,
    }
}

/// Ends a session as its owner's DELETE would (the host tears it down).
pub(crate) async fn end_session(
    scaler: &Scaler,
    operator: &Operator,
    session: &str,
) -> Result<Done, ApiError> {
    let record = Record::new(scaler, operator, "session.end", session);
    let Ok(id) = session.parse::<berth_common::SessionId>() else {
        return record
            .finish(Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such session",
            )))
            .await;
    };
    let result = async {
        let reason = format!("ended by operator {}", operator.subject);
        let row: Option<(String, String)> = sqlx::query_as(
            "WITH old AS (SELECT s.id, s.status, h.region FROM sessions s JOIN hosts h ON h.id = s.host_id \
                          WHERE s.id = $1 FOR UPDATE OF s), \
                  moved AS (UPDATE sessions s SET status = 'DYING', status_reason = $2, \
                                   outcome = coalesce(s.outcome, 'DELETED') \
                            FROM old WHERE s.id = old.id AND old.status <> 'DYING' RETURNING s.id) \
             SELECT old.region, CASE WHEN EXISTS (SELECT 1 FROM moved) THEN 'moved' ELSE old.status::text END FROM old",
        )
        .bind(id.0)
        .bind(&reason)
        .fetch_optional(&scaler.db)
        .await
        .map_err(db_error)?;
        if let Some((region, state)) = row {
            scaler.hints_written();
            let done = Done {
                changed: state == "moved",
                body: json!({"session_id": id.0, "status": "DYING"}),
            };
            return Ok((Some(region), done));
        }
        // Ended already: asking again is not an error.
        let ended: Option<String> =
            sqlx::query_scalar("SELECT outcome::text FROM session_history WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&scaler.db)
                .await
                .map_err(db_error)?;
        match ended {
            Some(outcome) => Ok((None, Done { changed: false, body: json!({"session_id": id.0, "status": outcome}) })),
            None => Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such session")),
        }
    }
    .await;
    match result {
        Ok((Some(region), done)) => record.region(&region).finish(Ok(done)).await,
        Ok((None, done)) => record.finish(Ok(done)).await,
        Err(error) => record.finish(Err(error)).await,
    }
}

/// A region name as the regions table allows it; anything else names no region.
fn known_shape(region: &str) -> Result<(), ApiError> {
    let mut bytes = region.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if first_ok
        && region.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such region",
        ))
    }
}

/// A change of a region's settings; absent fields stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegionChange {
    pub enabled: Option<bool>,
    pub target_free_slots: Option<i32>,
    pub max_hosts: Option<i32>,
}

/// Upper bound of a region's target and cap: a typo must not launch a fleet.
pub(crate) const REGION_LIMIT: i32 = 10_000;

impl RegionChange {
    fn validate(&self) -> Result<(), ApiError> {
        for (name, value) in [
            ("target_free_slots", self.target_free_slots),
            ("max_hosts", self.max_hosts),
        ] {
            if let Some(v) = value {
                if !(0..=REGION_LIMIT).contains(&v) {
                    return Err(ApiError::bad_request(format!(
                        "{name} must be between 0 and {REGION_LIMIT}, not {v}"
                    )));
                }
            }
        }
        if self.enabled.is_none() && self.target_free_slots.is_none() && self.max_hosts.is_none() {
            return Err(ApiError::bad_request(
                "nothing to change: send enabled, target_free_slots and/or max_hosts",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, sqlx::FromRow)]
struct RegionSettings {
    enabled: bool,
    target_free_slots: i32,
    max_hosts: i32,
}

pub(crate) async fn change_region(
    scaler: &Scaler,
    operator: &Operator,
    region: &str,
    change: &RegionChange,
) -> Result<Done, ApiError> {
    let record = Record::new(scaler, operator, "region.update", region).region(region);
    let result = async {
        known_shape(region)?;
        change.validate()?;
        let mut tx = scaler.db.begin().await.map_err(db_error)?;
        let before: Option<RegionSettings> = sqlx::query_as(
            "SELECT enabled, target_free_slots, max_hosts FROM regions WHERE name = $1 FOR UPDATE",
        )
        .bind(region)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(before) = before else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no region {region:?}")));
        };
        let after = RegionSettings {
            enabled: change.enabled.unwrap_or(before.enabled),
            target_free_slots: change.target_free_slots.unwrap_or(before.target_free_slots),
            max_hosts: change.max_hosts.unwrap_or(before.max_hosts),
        };
        let changed = after.enabled != before.enabled
            || after.target_free_slots != before.target_free_slots
            || after.max_hosts != before.max_hosts;
        if changed {
            sqlx::query(
                "UPDATE regions SET enabled = $2, target_free_slots = $3, max_hosts = $4, updated_at = now() WHERE name = $1",
            )
            .bind(region)
            .bind(after.enabled)
            .bind(after.target_free_slots)
            .bind(after.max_hosts)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        if changed {
            scaler.wake(region);
        }
        let settings = |s: &RegionSettings| {
            json!({"enabled": s.enabled, "target_free_slots": s.target_free_slots, "max_hosts": s.max_hosts})
        };
        Ok(Done {
            changed,
            body: json!({"region": region, "before": settings(&before), "after": settings(&after)}),
        })
    }
    .await;
    record.finish(result).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployRequest {
    pub image_id: String,
    #[serde(default)]
    pub client_sha: String,
}

fn deploy_error(error: DeployError) -> ApiError {
    match error {
        DeployError::UnknownRegion(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", error.to_string())
        }
        DeployError::InProgress(_) => ApiError::new(
            StatusCode::CONFLICT,
            "DEPLOY_IN_PROGRESS",
            error.to_string(),
        ),
        DeployError::NothingToRelease(_) | DeployError::NothingToAbort(_) => {
            ApiError::new(StatusCode::CONFLICT, "NO_DEPLOY", error.to_string())
        }
        DeployError::Db(error) => {
            tracing::error!(%error, "a deploy action's query failed");
            internal_error()
        }
    }
}

pub(crate) async fn start_deploy(
    scaler: &Scaler,
    operator: &Operator,
    region: &str,
    request: &DeployRequest,
) -> Result<Done, ApiError> {
    let record = Record::new(scaler, operator, "deploy.start", region).region(region);
    let result = async {
        known_shape(region)?;
        let valid = |s: &str, max: usize| {
            s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
        };
        if request.image_id.is_empty() || !valid(&request.image_id, 128) || !valid(&request.client_sha, 128) {
            return Err(ApiError::bad_request(
                "image_id (1-128 characters) and client_sha (up to 128) may hold letters, digits and - _ . : / only",
            ));
        }
        // Asking again for the deploy in progress is not an error.
        if let Some(active) = deploy::active(&scaler.db, region).await.map_err(|e| deploy_error(e.into()))? {
            if active.image_id == request.image_id {
                return Ok(Done {
                    changed: false,
                    body: json!({"deploy_id": active.id, "region": region, "image_id": active.image_id, "state": active.state}),
                });
            }
        }
        let id = deploy::start(&scaler.db, region, &request.image_id, &request.client_sha, scaler.config.deploy_timeout())
            .await
            .map_err(deploy_error)?;
        scaler.wake(region);
        Ok(Done {
            changed: true,
            body: json!({"deploy_id": id, "region": region, "image_id": request.image_id, "state": "BUFFERING"}),
        })
    }
    .await;
    record.finish(result).await
}

pub(crate) async fn release_deploy(
    scaler: &Scaler,
    operator: &Operator,
    region: &str,
) -> Result<Done, ApiError> {
    let record = Record::new(scaler, operator, "deploy.release", region).region(region);
    let result = async {
        known_shape(region)?;
        let active = deploy::active(&scaler.db, region)
            .await
            .map_err(|e| deploy_error(e.into()))?;
        if let Some(active) = &active {
            if active.released_at.is_some() {
                return Ok(Done {
                    changed: false,
                    body: json!({"deploy_id": active.id, "region": region, "released": true}),
                });
            }
        }
        deploy::release(&scaler.db, region)
            .await
            .map_err(deploy_error)?;
        scaler.wake(region);
        Ok(Done {
            changed: true,
            body: json!({"deploy_id": active.map(|a| a.id), "region": region, "released": true}),
        })
    }
    .await;
    record.finish(result).await
}

pub(crate) async fn abort_deploy(
    scaler: &Scaler,
    operator: &Operator,
    region: &str,
) -> Result<Done, ApiError> {
    let record = Record::new(scaler, operator, "deploy.abort", region).region(region);
    let result = async {
        known_shape(region)?;
        let reason = format!("aborted by operator {}", operator.subject);
        match deploy::abort(&scaler.db, region, &reason).await {
            Ok(id) => {
                scaler.wake(region);
                Ok(Done {
                    changed: true,
                    body: json!({"deploy_id": id, "region": region, "state": "FAILED"}),
                })
            }
            Err(DeployError::NothingToAbort(_))
                if deploy::last_aborted(&scaler.db, region)
                    .await
                    .map_err(|e| deploy_error(e.into()))? =>
            {
                Ok(Done {
                    changed: false,
                    body: json!({"region": region, "state": "FAILED"}),
                })
            }
            Err(error) => Err(deploy_error(error)),
        }
    }
    .await;
    record.finish(result).await
}
