//! Test support for every Berth crate: a fresh, migrated database per test on
//! the PostgreSQL that DATABASE_URL points at (scripts/test starts one),
//! bounded waits and child processes, a checker for classic metrics text, a
//! test CA (`tls_ca`) and a real headless Chromium driven over WebDriver
//! (`browser`).
//! Only dev-dependencies name this crate, so nothing here reaches a binary and
//! the test build compiles `berth-common` exactly as the binaries do.

use sqlx::PgPool;

pub mod browser;
pub mod tls_ca;

use berth_common::db;

/// The operator token test services are started with (BERTH_OPERATOR_TOKEN).
pub const OPERATOR_TOKEN: &str = "operator-token-of-the-test-services";

/// Removes a directory tree a host used, unmounting first what is mounted
/// beneath it (its sessions' storage).
pub fn remove_tree(dir: &std::path::Path) {
    berth_common::mounts::unmount_beneath(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// A binary of this workspace as cargo built it for this test run
/// (`target/<profile>/<name>`, beside the test executable's `deps/`);
/// scripts/test's `cargo test --workspace` builds every one the tests run.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --workspace); scripts/test does",
        bin.display()
    );
    bin
}

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
    /// A fresh database with the schema migrated.
    pub async fn new() -> Self {
        Self::create(true).await
    }

    /// A fresh, empty database that was never migrated.
    pub async fn unmigrated() -> Self {
        Self::create(false).await
    }

    async fn create(migrate: bool) -> Self {
        berth_common::tls::install_crypto_provider();
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
        if migrate {
            db::migrate(&pool)
                .await
                .expect("migrating the test database");
        }
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

/// DATABASE_URL with parts changed, e.g. a wrong password or another database.
pub fn database_url_with(
    change: impl FnOnce(sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions,
) -> String {
    use sqlx::ConnectOptions;
    let options: sqlx::postgres::PgConnectOptions = database_url()
        .parse()
        .expect("DATABASE_URL is a PostgreSQL URL");
    change(options).to_url_lossy().to_string()
}

/// A port on 127.0.0.1 where nothing listens: bound, then released.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A process that ran to its end: its exit code (None: killed by a signal),
/// what it printed, and how long it took.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

impl Finished {
    /// stdout and stderr together, for assertions on what the process said.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `command` to its end, failing the test if it is still running after
/// `limit` (it is killed then).
pub async fn run_bounded(command: std::process::Command, limit: std::time::Duration) -> Finished {
    use std::process::Stdio;
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{:?}", command.as_std());
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} was still running after {limit:?}"))
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Kills a spawned process when the test ends, pass or fail.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `pg_ctlcluster <version> <name> <action>` (`stop`, `start`, `restart`)
/// on the Debian cluster that serves DATABASE_URL's port. `None` when there is
/// no such cluster tool (not a Debian PostgreSQL; the caller says it skipped).
/// Every test of every binary shares that server: only a test alone in its
/// binary (cargo runs binaries one at a time) may call this.
pub fn postgres_cluster(action: &str) -> Option<bool> {
    use std::process::Command;
    let port = database_url()
        .rsplit_once(':')
        .map(|(_, rest)| rest.split('/').next().unwrap_or("").to_owned());
    let listed = Command::new("pg_lsclusters").arg("-h").output().ok()?;
    let clusters = String::from_utf8_lossy(&listed.stdout).into_owned();
    let cluster = clusters
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|c| c.get(2).cloned() == port)?;
    let status = Command::new("pg_ctlcluster")
        .args([&cluster[0], &cluster[1], action])
        .args(if action == "stop" {
            &["-m", "fast"][..]
        } else {
            &[][..]
        })
        .status()
        .ok()?;
    // pg_ctlcluster exits 2 for "already running" on start: the wanted state.
    Some(status.success() || (action == "start" && status.code() == Some(2)))
}

/// What `promtool check metrics` finds wrong with classic text, one message
/// per problem (empty = clean): every sample belongs to a family with HELP
/// and TYPE declared before it, counters end in `_total`, and nothing
/// OpenMetrics-only is left.
pub fn classic_problems(text: &str) -> Vec<String> {
    let mut help = std::collections::HashSet::new();
    let mut types: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut problems = vec![];
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let family = rest.split(' ').next().unwrap_or("");
            help.insert(family.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                problems.push(format!("{family}: type {kind:?} is not a classic type"));
            }
            if kind == "counter" && !family.ends_with("_total") {
                problems.push(format!("{family}: counter names end in _total"));
            }
            if !help.contains(family) {
                problems.push(format!("{family}: TYPE without HELP before it"));
            }
            types.insert(family.to_owned(), kind.to_owned());
        } else if line.starts_with('#') {
            problems.push(format!("{line:?}: not a classic comment"));
        } else if !line.trim().is_empty() {
            let name = berth_common::exposition::sample_name(line);
            let family = types.keys().find(|family| {
                name == family.as_str()
                    || (matches!(
                        types.get(*family).map(String::as_str),
                        Some("histogram" | "summary")
                    ) && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family.as_str())))
            });
            if family.is_none() {
                problems.push(format!("{name}: sample without HELP and TYPE"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::classic_problems;
    use berth_common::exposition::classic_from_openmetrics;

    const OPENMETRICS: &str = "# HELP berth_x_assigns Sessions assigned.\n\
        # TYPE berth_x_assigns counter\n\
        berth_x_assigns_total 3\n\
        berth_x_assigns_created 1700000000.0\n\
        # HELP berth_x_seconds Latency.\n\
        # TYPE berth_x_seconds histogram\n\
        # UNIT berth_x_seconds seconds\n\
        berth_x_seconds_sum 0.5\n\
        berth_x_seconds_count 1\n\
        # EOF\n";

    #[test]
    fn openmetrics_has_problems_as_classic_text_and_its_conversion_has_none() {
        assert!(!classic_problems(OPENMETRICS).is_empty());
        let classic = classic_from_openmetrics(OPENMETRICS);
        assert_eq!(
            classic_problems(&classic),
            Vec::<String>::new(),
            "{classic}"
        );
    }
}
