//! How the daemon, run as systemd runs it, fails to start: a wrong setting
//! exits 64 (usage) or 78 (configuration; the unit does not restart it) with a
//! message saying what to fix, an outage exits 1 quickly (the unit retries),
//! and `host-service drain` of a host the database does not know fails.

mod support;

use std::process::Command;
use std::time::Duration;

use berth_testing::{closed_port, database_url_with, run_bounded, Finished};
use support::*;
use uuid::Uuid;

/// host-service with these arguments (argv[0] excluded), run to its end.
async fn host_service(args: &[String], env: &[(&str, &str)]) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_host-service"));
    command.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    run_bounded(command, Duration::from_secs(30)).await
}

/// Arguments of a local host on `db`, with `--database-url` replaced by `url` if given.
fn local_args(db: &TestDb, url: Option<&str>, extra: &[&str]) -> (String, Vec<String>) {
    let host_id = format!("t-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let state_dir = std::env::temp_dir().join(format!("berth-state-{host_id}"));
    let mut argv = host_args(db, &HostArgs::default(), &host_id, &state_dir);
    argv.remove(0);
    if let Some(url) = url {
        let at = argv.iter().position(|a| a == "--database-url").unwrap() + 1;
        argv[at] = url.to_owned();
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    (host_id, argv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_false_on_an_unmigrated_database_refuses_to_start_and_changes_nothing() {
    let db = TestDb::unmigrated().await;
    let (_, argv) = local_args(&db, None, &["--migrate=false"]);
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    let said = run.output();
    assert!(
        said.contains("schema is behind") && said.contains("--migrate=true"),
        "the message says what is wrong and what to do: {said}"
    );
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!tracked, "--migrate=false must not touch the schema");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booleans_take_only_true_or_false() {
    let db = TestDb::new().await;
    for (flag, env) in [
        ("--migrate=no", None),
        ("--migrate=1", None),
        ("--local=yes", None),
        ("drain", Some(("BERTH_MIGRATE", "no"))),
    ] {
        let (_, mut argv) = local_args(&db, None, &[]);
        match argv.iter().position(|a| a == "--local") {
            // The harness's hosts are --local already: spell that one differently.
            Some(at) if flag.starts_with("--local") => argv[at] = flag.to_owned(),
            _ => argv.push(flag.to_owned()),
        }
        let run = host_service(&argv, env.as_slice()).await;
        assert_eq!(run.code, Some(64), "{flag} {env:?}: {run:?}");
        assert!(
            run.stderr.contains("possible values: true, false"),
            "{flag} {env:?}: the usage error names the accepted values: {}",
            run.stderr
        );
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_postgresql_listening_fails_at_once_with_the_real_cause_and_exit_1() {
    let db = TestDb::new().await;
    let url = database_url_with(|o| o.port(closed_port()));
    let (_, argv) = local_args(&db, Some(&url), &[]);
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(1), "an outage is worth a restart: {run:?}");
    assert!(
        run.elapsed < Duration::from_secs(3),
        "took {:?}: the pool's acquire timeout must not hide the refusal",
        run.elapsed
    );
    let said = run.output();
    assert!(
        said.contains("refused the connection")
            && said.contains("check that PostgreSQL is running")
            && !said.contains("pool timed out"),
        "{said}"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout_with_exit_1() {
    // Accepts connections and says nothing, like a wedged server or a
    // firewall that lets the handshake through.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = vec![];
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let db = TestDb::new().await;
    let url = database_url_with(|o| o.port(port));
    let (_, argv) = local_args(&db, Some(&url), &[]);
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    assert!(
        run.output().contains("did not answer within 5 s"),
        "{}",
        run.output()
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_configuration_errors_exit_78_so_systemd_stops_restarting() {
    let db = TestDb::new().await;
    let cases = [
        (
            "wrong password",
            database_url_with(|o| o.password("not-the-password")),
            "check the user and password in DATABASE_URL",
        ),
        (
            "no such database",
            database_url_with(|o| o.database("berth_no_such_database")),
            "check the database name in DATABASE_URL",
        ),
        (
            "invalid URL",
            "postgres://berth@127.0.0.1:notaport/berth".to_owned(),
            "invalid DATABASE_URL",
        ),
    ];
    for (what, url, fix) in cases {
        let (_, argv) = local_args(&db, Some(&url), &[]);
        let run = host_service(&argv, &[]).await;
        assert_eq!(run.code, Some(78), "{what}: {run:?}");
        let said = run.output();
        assert!(said.contains(fix), "{what}: {said}");
        assert!(
            !said.contains("not-the-password"),
            "{what}: the password is never printed: {said}"
        );
    }
    db.drop_database().await;

    // The unit gives up on exactly those codes.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/host-service.service"
    ))
    .unwrap();
    assert!(
        unit.lines()
            .any(|l| l.trim() == "RestartPreventExitStatus=64 78"),
        "host-service.service must not restart on 64 or 78"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_a_host_the_database_does_not_know_fails() {
    let db = TestDb::new().await;
    let (host_id, mut argv) = local_args(&db, None, &[]);
    argv.push("drain".into());

    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    let said = run.output();
    assert!(
        said.contains(&host_id) && said.contains("nothing to drain"),
        "the message names the host and says why: {said}"
    );

    // A known host is drained, once; a second drain is a no-op, not an error.
    sqlx::query(
        "INSERT INTO hosts (id, region, image_id, instance_type, capacity, free_slots, status) \
         VALUES ($1, 'local', 'local', 'local', 2, 0, 'ACTIVE')",
    )
    .bind(&host_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("marked DRAINING"), "{run:?}");
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("already DRAINING"), "{run:?}");
    db.drop_database().await;
}
