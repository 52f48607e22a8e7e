//! Test support: a fresh, migrated database per test on the PostgreSQL that
//! DATABASE_URL points at (scripts/test starts one). Only with the `testing`
//! feature, which only dev-dependencies enable.

use sqlx::PgPool;

use crate::db;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL must point at the test PostgreSQL; run scripts/test, which starts one")
    })
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        crate::tls::install_crypto_provider();
        let base = database_url();
        let admin = db::connect(&base, "berth-tests", 2)
            .await
            .expect("connecting to the test PostgreSQL");
        let name = format!(
            "berth_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("creating a test database");
        admin.close().await;
        let (prefix, _) = base
            .rsplit_once('/')
            .expect("DATABASE_URL has a database path");
        let url = format!("{prefix}/{name}");
        let pool = db::connect(&url, "berth-tests", 16)
            .await
            .expect("connecting to the test database");
        db::migrate(&pool)
            .await
            .expect("migrating the test database");
        Self { url, pool, name }
    }

    /// Drops the database (best effort; CI machines are thrown away anyway).
    pub async fn drop_database(self) {
        self.pool.close().await;
        if let Ok(admin) = db::connect(&database_url(), "berth-tests", 1).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await;
        }
    }
}

/// Polls `condition` until it holds, failing the test after `timeout`. For
/// conditions no event announces (a row's state, a container's presence).
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
