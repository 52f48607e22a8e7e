//! The audit trail: who did what to which target, when, from where, and how
//! it came out. Operator actions are written before their answer; the
//! frequent records (assigns, deletes, logins, registrations) are batched
//! into one statement per short interval, like heartbeats, so the assign path
//! pays no extra round trip. Records never hold a token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How long a batched record waits, at most, before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Records held while the database refuses them; past it the oldest go (and
/// the log says how many), so an outage cannot exhaust memory.
const MAX_PENDING: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Operator,
    User,
    Host,
    System,
}

impl ActorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::User => "user",
            Self::Host => "host",
            Self::System => "system",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// One record, as written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub actor_kind: ActorKind,
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub region: Option<String>,
    pub address: Option<String>,
    pub outcome: Outcome,
    pub detail: serde_json::Value,
}

impl Entry {
    pub fn new(actor_kind: ActorKind, actor: &str, action: &'static str, target: &str) -> Self {
        Self {
            actor_kind,
            actor: clip(actor),
            action,
            target: clip(target),
            region: None,
            address: None,
            outcome: Outcome::Ok,
            detail: serde_json::json!({}),
        }
    }
    pub fn region(mut self, region: &str) -> Self {
        self.region = Some(clip(region));
        self
    }
    pub fn address(mut self, address: Option<String>) -> Self {
        self.address = address;
        self
    }
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        if detail.is_object() {
            self.detail = detail;
        }
        self
    }
}

/// The table's limits: subjects and targets come from tokens and paths.
fn clip(s: &str) -> String {
    let s = if s.is_empty() { "-" } else { s };
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

#[derive(Debug, Default)]
pub struct AuditLog {
    pending: Mutex<Vec<Entry>>,
}

impl AuditLog {
    /// Queues a record for the next batched write.
    pub fn record(&self, entry: Entry) {
        let mut pending = self.lock();
        pending.push(entry);
        if pending.len() > MAX_PENDING {
            let dropped = pending.len() - MAX_PENDING;
            pending.drain(..dropped);
            tracing::error!(
                dropped,
                "the audit trail cannot be written and its queue is full; dropped the oldest records"
            );
        }
    }

    /// Writes one record now (operator actions: recorded before answering).
    pub async fn write(&self, db: &PgPool, entry: Entry) -> Result<(), sqlx::Error> {
        insert(db, std::slice::from_ref(&entry)).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes what is queued in one statement; the number written.
    pub async fn flush(&self, db: &PgPool) -> Result<usize, sqlx::Error> {
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        match insert(db, &batch).await {
            Ok(()) => Ok(batch.len()),
            Err(error) => {
                // Back in front of what queued meanwhile, in order.
                let mut pending = self.lock();
                let newer = std::mem::replace(&mut *pending, batch);
                drop(pending);
                for entry in newer {
                    self.record(entry);
                }
                Err(error)
            }
        }
    }
}

async fn insert(db: &PgPool, entries: &[Entry]) -> Result<(), sqlx::Error> {
    // One array per column, unnested into rows by the statement.
    let column = |f: fn(&Entry) -> Option<String>| entries.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO audit (actor_kind, actor, action, target, region, address, outcome, detail) \
         SELECT k, a, act, t, r, addr, o, d::jsonb \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
              AS x(k, a, act, t, r, addr, o, d)",
    )
    .bind(column(|e| Some(e.actor_kind.as_str().to_owned())))
    .bind(column(|e| Some(e.actor.clone())))
    .bind(column(|e| Some(e.action.to_owned())))
    .bind(column(|e| Some(e.target.clone())))
    .bind(column(|e| e.region.clone()))
    .bind(column(|e| e.address.clone()))
    .bind(column(|e| Some(e.outcome.as_str().to_owned())))
    .bind(column(|e| Some(e.detail.to_string())))
    .execute(db)
    .await
    .map(|_| ())
}

/// Flushes `log` every [`FLUSH_EVERY`] until `stop` (and once more then).
pub async fn run(log: Arc<AuditLog>, db: PgPool, stop: CancellationToken) {
    crate::batching::flush_every(FLUSH_EVERY, stop, "audit records", || log.flush(&db)).await
}

/// Deletes records older than `days`; the number deleted.
pub async fn prune(db: &PgPool, days: u32) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SET LOCAL berth.audit_prune = 'on'")
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM audit WHERE at < now() - make_interval(days => $1)")
        .bind(days as i32)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// What a query of the trail selects; every field narrows it.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub region: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset paging: only records older than this id.
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Record {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub region: Option<String>,
    pub address: Option<String>,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// Records matching `filter`, newest first.
pub async fn query(db: &PgPool, filter: &Filter) -> Result<Vec<Record>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor_kind, actor, action, target, region, address, outcome, detail FROM audit \
         WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2) \
           AND ($3::text IS NULL OR target = $3) AND ($4::text IS NULL OR region = $4) \
           AND ($5::text IS NULL OR outcome = $5) AND ($6::timestamptz IS NULL OR at >= $6) \
           AND ($7::timestamptz IS NULL OR at < $7) AND ($8::bigint IS NULL OR id < $8) \
         ORDER BY id DESC LIMIT $9",
    )
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.target)
    .bind(&filter.region)
    .bind(&filter.outcome)
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_targets_are_clipped_and_cleaned() {
        let entry = Entry::new(ActorKind::User, &"x".repeat(300), "session.assign", "a\nb");
        assert_eq!(entry.actor.len(), 256);
        assert_eq!(entry.target, "ab");
        assert_eq!(Entry::new(ActorKind::User, "", "a", "").actor, "-");
    }

    #[test]
    fn a_full_queue_drops_its_oldest_records() {
        let log = AuditLog::default();
        for i in 0..MAX_PENDING + 3 {
            log.record(Entry::new(ActorKind::System, &i.to_string(), "a", ""));
        }
        let pending = log.lock();
        assert_eq!(pending.len(), MAX_PENDING);
        assert_eq!(pending[0].actor, "3");
    }
}
