//! The database: pool, embedded migrations, guarded slot updates and a
//! NOTIFY listener that tells its owner when to re-read the truth.

mod listen;
mod slots;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use listen::{Hint, HintListener};
pub use slots::{release_free_slot, take_free_slot};

/// The schema, embedded at build time from `common/migrations`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a caller may wait for a pooled connection before giving up with
/// an error instead of hanging.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}; expected postgres://user:password@host:port/database")]
    BadUrl(#[source] sqlx::Error),
    #[error("connecting to PostgreSQL at {target}: {source}; check that it runs and DATABASE_URL is right")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "applying schema migrations: {0}; an applied migration must never be edited, add a new one"
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
}

/// Opens a pool. The first connection is made eagerly so a wrong URL fails at
/// start, not at the first request; `application_name` shows who is who in
/// `pg_stat_activity`.
pub async fn connect(
    url: &str,
    application_name: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::BadUrl)?;
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let options = options.application_name(application_name);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

/// Applies pending migrations. Safe with several processes starting at once:
/// sqlx takes an advisory lock around the run.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
