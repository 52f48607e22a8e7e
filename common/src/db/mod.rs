//! The database: pool, embedded migrations, guarded slot updates, a NOTIFY
//! listener that tells its owner when to re-read the truth, and the
//! publisher of the hints the triggers queue.
//!
//! Starting up goes through two steps here. [`connect`] makes one direct
//! connection first, so a start against a wrong or dead database fails within
//! seconds with the server's own reason (refused, unknown database, bad
//! password) instead of a pool timeout, and tells configuration errors
//! ([`DbError::is_config`]) from outages. [`prepare_schema`] then compares the
//! migrations embedded in the binary with those recorded in `_sqlx_migrations`
//! and either applies the missing ones (`--migrate=true`) or refuses to start
//! (`--migrate=false`): a process never serves on a schema older than its code.

mod listen;
mod outbox;
mod slots;

use std::collections::HashMap;
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use listen::{Hint, HintListener};
pub use outbox::publish_queued_hints;
pub use slots::{release_free_slot, take_free_slot};

/// The schema, embedded at build time from `common/migrations`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a caller may wait for a pooled connection before giving up with
/// an error instead of hanging.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle at least this long is pinged before it is handed
/// out (a server restart meanwhile would have closed it).
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long the first connection at start may take before the start fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database is and whether to migrate it: the settings of every
/// process that holds a database connection (the control plane, its
/// operator commands), flattened into its command line.
#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://berth:secret@db.internal:5432/berth.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Apply pending schema migrations at start: `true` or `false`.
    ///
    /// With `true` the migrations this binary embeds that the database lacks
    /// are applied before anything is served (safe with several processes
    /// starting at once). With `false` nothing is changed, and the binary
    /// refuses to start (exit 78, not restarted by the systemd units) unless
    /// every one of its migrations is already applied unchanged — it never
    /// serves, or reports ready, on a schema older than its code. Either way a
    /// schema that also has a newer release's migrations is accepted with a
    /// warning, so the previous release keeps running during a rollout.
    #[arg(long, env = "BERTH_MIGRATE", default_value_t = true, action = clap::ArgAction::Set, require_equals = true,
          num_args = 0..=1, default_missing_value = "true", value_parser = crate::config::strict_bool())]
    pub migrate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}; expected postgres://user:password@host:port/database")]
    BadUrl(#[source] sqlx::Error),
    #[error("PostgreSQL at {target} refused the connection ({source}); check that PostgreSQL is running and listening there, and the host and port in DATABASE_URL")]
    Refused {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PostgreSQL at {target} did not answer within {} s; check that the host and port in DATABASE_URL are reachable from here (network, firewall, security groups) and that the server is up", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { target: String },
    /// The server answered and said no, for a reason a retry cannot fix.
    #[error("PostgreSQL at {target} turned the connection down: {source}; {fix}")]
    Misconfigured {
        target: String,
        fix: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("connecting to PostgreSQL at {target}: {source}; check that it runs and DATABASE_URL is right")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database schema is behind this binary: its migrations {missing:?} are not applied; \
             start once with --migrate=true (BERTH_MIGRATE=true) or run your migration step, then start again")]
    SchemaBehind { missing: Vec<i64> },
    #[error("the database schema lacks this binary's migrations {missing:?} but has {newer:?}, which this binary does not know: \
             it was migrated by a different line of releases; deploy the release that migrated it")]
    SchemaDiverged { missing: Vec<i64>, newer: Vec<i64> },
    #[error("migration {0} recorded in the database differs from this binary's copy of it; the database was migrated by \
             another build of this release — deploy the build that migrated it (an applied migration must never be edited, add a new one)")]
    SchemaEdited(i64),
    #[error("migration {0} failed part-way in an earlier run (success = false in _sqlx_migrations); repair the schema by hand, \
             delete that row, then start with --migrate=true")]
    SchemaDirty(i64),
    #[error(
        "applying schema migrations: {0}; an applied migration must never be edited, add a new one"
    )]
    Migrate(#[from] MigrateError),
    #[error("database query failed while {doing}: {source}")]
    Query {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl DbError {
    pub fn query(doing: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
        move |source| DbError::Query { doing, source }
    }

    /// Whether the error is one of configuration (wrong URL, credentials,
    /// database name, schema level) that no restart can fix, as opposed to an
    /// outage that may pass. Binaries exit 78 (EX_CONFIG) on these and 1
    /// otherwise, so systemd stops restarting them only when retrying is futile.
    pub fn is_config(&self) -> bool {
        match self {
            DbError::BadUrl(_)
            | DbError::Misconfigured { .. }
            | DbError::SchemaBehind { .. }
            | DbError::SchemaDiverged { .. }
            | DbError::SchemaEdited(_)
            | DbError::SchemaDirty(_) => true,
            DbError::Migrate(e) => matches!(
                e,
                MigrateError::VersionMissing(_)
                    | MigrateError::VersionMismatch(_)
                    | MigrateError::Dirty(_)
            ),
            DbError::Refused { .. }
            | DbError::ConnectTimeout { .. }
            | DbError::Connect { .. }
            | DbError::Query { .. } => false,
        }
    }

    /// Sorts a failed connection attempt into refused, misconfigured or other.
    fn connecting(target: String, source: sqlx::Error) -> DbError {
        let fix = match &source {
            sqlx::Error::Configuration(_) => return DbError::BadUrl(source),
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                return DbError::Refused { target, source }
            }
            sqlx::Error::Tls(_) => Some("check sslmode in DATABASE_URL (this build connects without TLS)"),
            sqlx::Error::Database(e) => match e.code().as_deref() {
                // invalid_password, invalid_authorization_specification (no such role, pg_hba.conf)
                Some("28P01" | "28000") => Some(
                    "check the user and password in DATABASE_URL, and that the server's pg_hba.conf admits this client",
                ),
                // invalid_catalog_name
                Some("3D000") => Some("check the database name in DATABASE_URL, or create that database"),
                // insufficient_privilege: no CONNECT on the database
                Some("42501") => Some("grant the user in DATABASE_URL CONNECT on that database"),
                _ => None,
            },
            _ => None,
        };
        match fix {
            Some(fix) => DbError::Misconfigured {
                target,
                fix,
                source,
            },
            None => DbError::Connect { target, source },
        }
    }
}

/// Opens a pool. One connection is made directly first, within
/// [`CONNECT_TIMEOUT`]: a pool retries a failing connect until its acquire
/// timeout and then reports only "pool timed out", which hides whether the
/// server is down, unreachable or turning the login away.
/// `application_name` shows who is who in `pg_stat_activity`.
pub async fn connect(
    url: &str,
    application_name: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::BadUrl)?;
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let options = options.application_name(application_name);
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Err(_) => return Err(DbError::ConnectTimeout { target }),
        Ok(Err(source)) => return Err(DbError::connecting(target, source)),
        Ok(Ok(first)) => {
            let _ = sqlx::Connection::close(first).await;
        }
    }
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings a connection when it returns to the pool and, by default,
        // again on every acquire: a round trip per query. A connection can only
        // have broken while it sat idle, so only one idle a while is pinged.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// Applies pending migrations. Safe with several processes starting at once:
/// sqlx takes an advisory lock around the run.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// How the schema recorded in `_sqlx_migrations` compares with [`MIGRATOR`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SchemaLevel {
    /// Migrations of this binary that are not applied.
    pub missing: Vec<i64>,
    /// Applied migrations whose checksum differs from this binary's.
    pub edited: Vec<i64>,
    /// A migration that failed part-way (recorded with success = false).
    pub dirty: Option<i64>,
    /// Applied migrations this binary does not know (a newer release's).
    pub newer: Vec<i64>,
}

/// Reads the applied migrations through sqlx's migrator and compares them
/// with the embedded ones. Changes nothing (a database never migrated has no
/// `_sqlx_migrations` table, and it is not created here).
pub async fn schema_level(pool: &PgPool) -> Result<SchemaLevel, DbError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(DbError::query("checking the schema's migration level"))?;
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(DbError::query("checking the schema's migration level"))?;
    let read = |e: MigrateError| match e {
        MigrateError::Execute(source) => DbError::Query {
            doing: "reading the applied migrations (_sqlx_migrations)",
            source,
        },
        other => DbError::Migrate(other),
    };
    let (dirty, applied) = if tracked {
        (
            conn.dirty_version().await.map_err(read)?,
            conn.list_applied_migrations().await.map_err(read)?,
        )
    } else {
        (None, vec![])
    };
    let applied: HashMap<i64, _> = applied
        .into_iter()
        .map(|m| (m.version, m.checksum))
        .collect();
    let mut level = SchemaLevel {
        dirty,
        ..SchemaLevel::default()
    };
    for migration in MIGRATOR.iter() {
        if migration.migration_type.is_down_migration() {
            continue;
        }
        match applied.get(&migration.version) {
            None => level.missing.push(migration.version),
            Some(checksum) if *checksum != migration.checksum => {
                level.edited.push(migration.version)
            }
            Some(_) => {}
        }
    }
    level.newer = applied
        .keys()
        .copied()
        .filter(|v| !MIGRATOR.version_exists(*v))
        .collect();
    level.newer.sort_unstable();
    Ok(level)
}

/// Brings the process and the schema into step before anything is served:
/// every migration this binary embeds must be applied, unchanged. With
/// `migrate` the missing ones are applied; without, their absence is an error
/// ([`DbError::SchemaBehind`], exit 78) and nothing is changed. Migrations of
/// a newer release are tolerated with a warning, so replicas of the previous
/// release keep running while a new one rolls out.
pub async fn prepare_schema(pool: &PgPool, migrate: bool) -> Result<(), DbError> {
    let level = schema_level(pool).await?;
    if let Some(version) = level.dirty {
        return Err(DbError::SchemaDirty(version));
    }
    if let Some(&version) = level.edited.first() {
        return Err(DbError::SchemaEdited(version));
    }
    if !level.missing.is_empty() && !level.newer.is_empty() {
        return Err(DbError::SchemaDiverged {
            missing: level.missing,
            newer: level.newer,
        });
    }
    if !level.missing.is_empty() {
        if !migrate {
            return Err(DbError::SchemaBehind {
                missing: level.missing,
            });
        }
        MIGRATOR.run(pool).await?;
        tracing::info!(applied = ?level.missing, "schema migrated");
    }
    if !level.newer.is_empty() {
        tracing::warn!(
            newer = ?level.newer,
            "the database has migrations this binary does not know (a newer release applied them); running on that schema"
        );
    }
    Ok(())
}
