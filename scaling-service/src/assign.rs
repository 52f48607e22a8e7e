//! Assign: give a user a warm session, in one transaction. Per-user limit,
//! region order then fullest host first, the region's CURRENT image and the
//! client's commit, `FOR UPDATE … SKIP LOCKED` so concurrent assigns never
//! take the same session, a fresh token (only its hash stored), and a guarded
//! free-slot decrement. Idempotent per (user, client_session_id). The common
//! case is one database call (`assign_session`, a function the migrations
//! define); only when concurrent assigns hold the first choices does a
//! transaction here look further, host by host.

use berth_common::auth::new_session_token;
use berth_common::db::DbError;
use berth_common::SessionStatus;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    pub runtime: String,
    pub regions: Vec<String>,
    #[serde(default)]
    pub client_commit: String,
    #[serde(default)]
    pub client_session_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct HostInfo {
    pub id: String,
    pub ip: Option<String>,
    pub api_port: Option<i32>,
    pub cert_sha256: Option<String>,
    /// The host's region (for the audit trail; clients know their regions).
    #[serde(skip)]
    pub region: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Assigned {
    pub session_id: Uuid,
    pub status: SessionStatus,
    /// Present when issued by this call; a repeat of a running session's
    /// assign cannot return it (only its hash is stored).
    pub token: Option<String>,
    pub host: HostInfo,
    #[serde(skip)]
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error("{0}")]
    BadRequest(String),
    #[error("runtime {0:?} does not exist; GET /runtimes lists them")]
    UnknownRuntime(String),
    #[error("region {0:?} is not enabled; GET /regions lists them")]
    RegionNotEnabled(String),
    #[error("you already have {0} sessions, your limit; end one first")]
    UserLimit(i64),
    #[error("no host runs a build matching client commit {0:?}; update the client")]
    CommitMismatch(String),
    #[error(
        "no free session in the requested regions right now; more are starting, retry shortly"
    )]
    NoCapacity,
    #[error("runtime {runtime} needs {gpus} GPU(s) per session and no host with that many GPUs in these regions has a warm session; GPU hosts come from instance types with gpus")]
    NoGpuCapacity { runtime: String, gpus: String },
    #[error("this client_session_id's session is ending; retry with a new one")]
    Ending,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AssignRequest {
    pub fn validate(&self) -> Result<(), AssignError> {
        let bad = |m: &str| Err(AssignError::BadRequest(m.to_owned()));
        if self.runtime.is_empty() || self.runtime.len() > 63 {
            return bad("runtime must be 1 to 63 characters");
        }
        if self.regions.is_empty() || self.regions.len() > 16 {
            return bad("regions must list 1 to 16 regions in order of preference");
        }
        if self.regions.iter().any(|r| r.is_empty() || r.len() > 63) {
            return bad("each region must be 1 to 63 characters");
        }
        if self.client_commit.len() > 64 {
            return bad("client_commit must be at most 64 characters");
        }
        if self
            .client_session_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 128)
        {
            return bad("client_session_id must be 1 to 128 characters");
        }
        let fields = [&self.runtime, &self.client_commit]
            .into_iter()
            .chain(&self.regions)
            .chain(&self.client_session_id);
        if fields.into_iter().any(|f| has_control_characters(f)) {
            return bad("runtime, regions, client_commit and client_session_id must not contain control characters");
        }
        Ok(())
    }
}

/// NUL cannot be stored in PostgreSQL text and no other control character
/// belongs in a name or an id; such input is the client's mistake, not a 500.
pub fn has_control_characters(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn q(doing: &'static str) -> impl FnOnce(sqlx::Error) -> AssignError {
    move |e| AssignError::Db(DbError::Query { doing, source: e })
}

#[derive(sqlx::FromRow)]
struct Existing {
    id: Uuid,
    status: SessionStatus,
    host_id: String,
    ip: Option<String>,
    api_port: Option<i32>,
    cert_sha256: Option<String>,
    region: String,
}

const HOST_COLUMNS: &str =
    "h.id AS host_id, host(h.public_ip) AS ip, h.api_port, h.cert_sha256, h.region";

/// Transactions PostgreSQL aborted to break a deadlock or a serialization
/// conflict are safe to run again; this many attempts at most.
const ATTEMPTS: usize = 3;

pub async fn assign(
    db: &PgPool,
    user: &str,
    request: &AssignRequest,
) -> Result<Assigned, AssignError> {
    request.validate()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tried = match in_one_call(db, user, request).await {
            Ok(Some(done)) => Ok(done),
            // The heads of the pick order were taken: look further, host by host.
            Ok(None) => assign_once(db, user, request).await,
            Err(e) => Err(e),
        };
        match tried {
            Err(AssignError::Db(DbError::Query {
                source: sqlx::Error::Database(e),
                ..
            })) if attempt < ATTEMPTS && matches!(e.code().as_deref(), Some("40P01" | "40001")) => {
                tracing::debug!(attempt, code = ?e.code(), "assign transaction aborted by PostgreSQL; retrying");
            }
            other => return other,
        }
    }
}

/// What the database's `assign_session` answers (see its migration).
#[derive(sqlx::FromRow)]
struct OneCall {
    outcome: String,
    session_id: Option<Uuid>,
    session_status: Option<SessionStatus>,
    host_id: Option<String>,
    ip: Option<String>,
    api_port: Option<i32>,
    cert_sha256: Option<String>,
    region: Option<String>,
    detail: Option<String>,
}

/// The common assign as one statement (its own transaction): the user's
/// lock, a repeat, the checks and the allocation at the head of each region's
/// pick order. `None` when every head was taken or none qualifies: nothing
/// changed, and [`assign_once`] looks further.
async fn in_one_call(
    db: &PgPool,
    user: &str,
    request: &AssignRequest,
) -> Result<Option<Assigned>, AssignError> {
    let token = new_session_token();
    let answer: OneCall = sqlx::query_as(
        "SELECT outcome, session_id, session_status, host_id, ip, api_port, cert_sha256, region, detail \
         FROM assign_session($1, $2, $3, $4, $5, $6)",
    )
    .bind(user)
    .bind(&request.runtime)
    .bind(&request.regions)
    .bind(&request.client_commit)
    .bind(&request.client_session_id)
    .bind(&token.sha256_hex)
    .fetch_one(db)
    .await
    .map_err(q("assigning a session"))?;
    let detail = answer.detail.unwrap_or_default();
    let session = |token: Option<String>, created: bool| -> Result<Assigned, AssignError> {
        let (Some(session_id), Some(status), Some(id), Some(region)) = (
            answer.session_id,
            answer.session_status,
            answer.host_id.clone(),
            answer.region.clone(),
        ) else {
            return Err(unexpected("a session without its host"));
        };
        Ok(Assigned {
            session_id,
            status,
            token,
            host: HostInfo {
                id,
                ip: answer.ip.clone(),
                api_port: answer.api_port,
                cert_sha256: answer.cert_sha256.clone(),
                region,
            },
            created,
        })
    };
    match answer.outcome.as_str() {
        "allocated" => session(Some(token.token), true).map(Some),
        "reissued" => session(Some(token.token), false).map(Some),
        "repeated" => session(None, false).map(Some),
        "ending" => Err(AssignError::Ending),
        "region_not_enabled" => Err(AssignError::RegionNotEnabled(detail)),
        "unknown_runtime" => Err(AssignError::UnknownRuntime(request.runtime.clone())),
        "user_limit" => Err(AssignError::UserLimit(detail.parse().unwrap_or_default())),
        "pick" => Ok(None),
        other => Err(unexpected(&format!("the unknown outcome {other:?}"))),
    }
}

/// The schema and this binary disagree about `assign_session` (the startup
/// migration check makes this a bug, not an operator's mistake).
fn unexpected(what: &str) -> AssignError {
    AssignError::Db(DbError::Query {
        doing: "assigning a session",
        source: sqlx::Error::Protocol(format!("assign_session answered {what}")),
    })
}

/// The assign as a transaction, for when [`in_one_call`] found the heads of
/// the pick order taken: the same checks (a concurrent repeat may have landed
/// meanwhile), then host by host through [`pick`].
async fn assign_once(
    db: &PgPool,
    user: &str,
    request: &AssignRequest,
) -> Result<Assigned, AssignError> {
    let mut tx = db.begin().await.map_err(q("starting an assign"))?;
    // One assign per user at a time: the limit and idempotency checks below
    // would race otherwise. Other users are not affected.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('berth.user.' || $1, 0))")
        .bind(user)
        .execute(&mut *tx)
        .await
        .map_err(q("serializing the user's assigns"))?;
    if let Some(csid) = &request.client_session_id {
        if let Some(again) = repeat(&mut tx, user, csid).await? {
            tx.commit()
                .await
                .map_err(q("committing a repeated assign"))?;
            return Ok(again);
        }
    }
    // Regions, runtime and the user's limit in one round trip.
    let (enabled, runtime_gpus, limit, used): (Vec<String>, Option<String>, i32, i64) =
        sqlx::query_as(
            "SELECT ARRAY(SELECT name FROM regions WHERE name = ANY($2) AND enabled), \
                (SELECT gpus FROM runtimes WHERE name = $3), \
                coalesce((SELECT max_sessions FROM limits WHERE user_id = $1), \
                         (SELECT max_sessions FROM limits WHERE user_id = '*'), 3), \
                (SELECT count(*) FROM sessions WHERE user_id = $1 AND status <> 'DYING')",
        )
        .bind(user)
        .bind(&request.regions)
        .bind(&request.runtime)
        .fetch_one(&mut *tx)
        .await
        .map_err(q("checking regions, runtime and the user's limit"))?;
    if let Some(missing) = request.regions.iter().find(|r| !enabled.contains(r)) {
        return Err(AssignError::RegionNotEnabled(missing.clone()));
    }
    let Some(runtime_gpus) = runtime_gpus else {
        return Err(AssignError::UnknownRuntime(request.runtime.clone()));
    };
    // A GPU runtime goes only to hosts with at least that many GPUs.
    let min_gpus = gpus_needed(&runtime_gpus);
    if used >= i64::from(limit) {
        return Err(AssignError::UserLimit(used));
    }
    let token = new_session_token();
    let (session_id, host_id) = match pick(&mut tx, request, min_gpus).await? {
        Some(picked) => picked,
        None if min_gpus > 0 => {
            return Err(AssignError::NoGpuCapacity {
                runtime: request.runtime.clone(),
                gpus: runtime_gpus,
            })
        }
        None => return Err(no_capacity_reason(&mut tx, request).await?),
    };
    // The slot and the session in one statement: no slot, no allocation.
    let host: Option<HostInfo> = sqlx::query_as(
        "WITH slot AS (UPDATE hosts SET free_slots = free_slots - 1 \
                        WHERE id = $5 AND free_slots > 0 AND status = 'ACTIVE' \
                        RETURNING id, host(public_ip) AS ip, api_port, cert_sha256, region) \
         UPDATE sessions s SET status = 'ALLOCATED', user_id = $2, client_session_id = $3, token_sha256 = $4, \
                allocated_at = now() \
         FROM slot WHERE s.id = $1 AND s.host_id = slot.id \
         RETURNING slot.id, slot.ip, slot.api_port, slot.cert_sha256, slot.region",
    )
    .bind(session_id)
    .bind(user)
    .bind(&request.client_session_id)
    .bind(&token.sha256_hex)
    .bind(&host_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(q("allocating the session"))?;
    let Some(host) = host else {
        return Err(AssignError::NoCapacity);
    };
    tx.commit().await.map_err(q("committing the assign"))?;
    Ok(Assigned {
        session_id,
        status: SessionStatus::Allocated,
        token: Some(token.token),
        host,
        created: true,
    })
}

/// The same user asking again with the same client_session_id gets the same
/// session. Before the app runs, the token is re-issued (the client may have
/// lost the first answer); hosts check the stored hash, so the old one stops working.
async fn repeat(
    tx: &mut PgConnection,
    user: &str,
    csid: &str,
) -> Result<Option<Assigned>, AssignError> {
    let existing: Option<Existing> = sqlx::query_as(&format!(
        "SELECT s.id, s.status, {HOST_COLUMNS} FROM sessions s JOIN hosts h ON h.id = s.host_id \
         WHERE s.user_id = $1 AND s.client_session_id = $2"
    ))
    .bind(user)
    .bind(csid)
    .fetch_optional(&mut *tx)
    .await
    .map_err(q("looking up a previous assign"))?;
    let Some(e) = existing else { return Ok(None) };
    let host = HostInfo {
        id: e.host_id,
        ip: e.ip,
        api_port: e.api_port,
        cert_sha256: e.cert_sha256,
        region: e.region,
    };
    let token = match e.status {
        SessionStatus::Dying => return Err(AssignError::Ending),
        SessionStatus::Allocated | SessionStatus::Connecting => {
            let token = new_session_token();
            sqlx::query("UPDATE sessions SET token_sha256 = $2 WHERE id = $1")
                .bind(e.id)
                .bind(&token.sha256_hex)
                .execute(&mut *tx)
                .await
                .map_err(q("re-issuing a session token"))?;
            Some(token.token)
        }
        SessionStatus::Running | SessionStatus::Waiting => None,
    };
    Ok(Some(Assigned {
        session_id: e.id,
        status: e.status,
        token,
        host,
        created: false,
    }))
}

/// The host: ACTIVE, on its region's CURRENT image (and the client's
/// commit), with a free slot and a warm session of the runtime, not in
/// `tried`; by region preference, then fullest first. One region at a time,
/// so each lookup walks the `hosts_pick` index in its order and stops at the
/// first host that qualifies (its cost does not grow with the fleet).
/// Locking the host row with SKIP LOCKED spreads concurrent assigns over
/// hosts instead of queueing them all on the fullest one.
async fn pick_host(
    tx: &mut PgConnection,
    request: &AssignRequest,
    tried: &[String],
    min_gpus: i32,
) -> Result<Option<String>, AssignError> {
    let sql = "SELECT h.id FROM hosts h \
         JOIN images i ON i.region = h.region AND i.image_id = h.image_id AND i.status = 'CURRENT' \
         WHERE h.status = 'ACTIVE' AND h.free_slots > 0 AND h.region = $1 AND ($2 = '' OR h.client_sha = $2) \
           AND NOT (h.id = ANY($4)) AND h.gpus >= $5 \
           AND EXISTS (SELECT 1 FROM sessions s WHERE s.host_id = h.id AND s.runtime = $3 AND s.status = 'WAITING') \
         ORDER BY h.free_slots, h.id \
         LIMIT 1 FOR UPDATE OF h SKIP LOCKED";
    for region in &request.regions {
        let host: Option<String> = sqlx::query_scalar(sql)
            .bind(region)
            .bind(&request.client_commit)
            .bind(&request.runtime)
            .bind(tried)
            .bind(min_gpus)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("picking a host"))?;
        if host.is_some() {
            return Ok(host);
        }
    }
    Ok(None)
}

/// Most hosts one assign looks at before answering NO_CAPACITY.
const MAX_HOSTS_TRIED: usize = 8;

/// A warm session on a picked host (through the partial index of WAITING
/// sessions). A host can lose its last warm session between the pick's
/// snapshot and its lock; then the next host is tried. Host locks are only
/// ever taken with SKIP LOCKED — a waiting lock while holding another could
/// deadlock — so when every candidate is locked by concurrent assigns, it backs
/// off briefly and looks again (bounded by the assign deadline above it).
async fn pick(
    tx: &mut PgConnection,
    request: &AssignRequest,
    min_gpus: i32,
) -> Result<Option<(Uuid, String)>, AssignError> {
    let mut tried: Vec<String> = vec![];
    let mut pause = std::time::Duration::from_millis(1);
    while tried.len() < MAX_HOSTS_TRIED {
        let Some(host) = pick_host(tx, request, &tried, min_gpus).await? else {
            if !tried.is_empty()
                || pause > MAX_PICK_PAUSE
                || !any_candidate(tx, request, min_gpus).await?
            {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            continue;
        };
        let session: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM sessions WHERE host_id = $1 AND runtime = $2 AND status = 'WAITING' LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&host)
        .bind(&request.runtime)
        .fetch_optional(&mut *tx)
        .await
        .map_err(q("picking a warm session"))?;
        match session {
            Some(session) => return Ok(Some((session, host))),
            None => tried.push(host),
        }
    }
    Ok(None)
}

/// Back-off for a fully locked candidate set: 1, 2, 4 … 32 ms.
/// The fewest GPUs a host needs for a runtime asking for `gpus` per
/// session (`0`, a count, or `all`).
fn gpus_needed(gpus: &str) -> i32 {
    match gpus {
        "all" => 1,
        n => n.parse().unwrap_or(0),
    }
}

const MAX_PICK_PAUSE: std::time::Duration = std::time::Duration::from_millis(32);

/// Whether any host would qualify if none were locked (no lock taken).
async fn any_candidate(
    tx: &mut PgConnection,
    request: &AssignRequest,
    min_gpus: i32,
) -> Result<bool, AssignError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM hosts h \
         JOIN images i ON i.region = h.region AND i.image_id = h.image_id AND i.status = 'CURRENT' \
         WHERE h.status = 'ACTIVE' AND h.free_slots > 0 AND h.region = ANY($1) AND ($2 = '' OR h.client_sha = $2) \
           AND h.gpus >= $4 \
           AND EXISTS (SELECT 1 FROM sessions s WHERE s.host_id = h.id AND s.runtime = $3 AND s.status = 'WAITING'))",
    )
    .bind(&request.regions)
    .bind(&request.client_commit)
    .bind(&request.runtime)
    .bind(min_gpus)
    .fetch_one(&mut *tx)
    .await
    .map_err(q("looking for candidate hosts"))
}

/// Tells a client whose build no host runs apart from a plain lack of
/// capacity: only free sessions on hosts of *another* build mean the commit is
/// the problem (sessions of its own build may just be locked by concurrent assigns).
async fn no_capacity_reason(
    tx: &mut PgConnection,
    request: &AssignRequest,
) -> Result<AssignError, AssignError> {
    if request.client_commit.is_empty() {
        return Ok(AssignError::NoCapacity);
    }
    let other_commit_has_room: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sessions s JOIN hosts h ON h.id = s.host_id \
         JOIN images i ON i.region = h.region AND i.image_id = h.image_id AND i.status = 'CURRENT' \
         WHERE s.status = 'WAITING' AND s.runtime = $1 AND h.status = 'ACTIVE' AND h.free_slots > 0 AND h.region = ANY($2) \
           AND h.client_sha <> $3)",
    )
    .bind(&request.runtime)
    .bind(&request.regions)
    .bind(&request.client_commit)
    .fetch_one(&mut *tx)
    .await
    .map_err(q("checking commits"))?;
    Ok(if other_commit_has_room {
        AssignError::CommitMismatch(request.client_commit.clone())
    } else {
        AssignError::NoCapacity
    })
}
