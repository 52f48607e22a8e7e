//! The scaler as a process: it never serves (or reports ready) on a schema
//! older than its code, takes only `true`/`false` for booleans, starts off
//! EC2 without probing instance metadata, and its HTTP errors say what to send.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use berth_testing::{closed_port, run_bounded, KillOnDrop};
use support::*;

fn scaling_service(argv: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scaling-service"));
    command.args(&argv[1..]);
    command
}

/// `argv` with `flag`'s value replaced.
fn with(mut argv: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let at = argv.iter().position(|a| a == flag).unwrap() + 1;
    argv[at] = value.to_owned();
    argv
}

/// A scaler process serving on its own port; its output goes to a file.
struct Running {
    _process: KillOnDrop,
    url: String,
    log: std::path::PathBuf,
}

impl Running {
    async fn start(argv: Vec<String>, env: &[(&str, Option<&str>)]) -> Running {
        let port = closed_port();
        let argv = with(argv, "--port", &port.to_string());
        let log = std::env::temp_dir().join(format!("berth-scaler-{}.log", env_name()));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = scaling_service(&argv);
        command
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        let mut process = KillOnDrop(command.spawn().expect("starting scaling-service"));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/healthz")).await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!(
                    "the scaler exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the scaler did not serve within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Running {
            _process: process,
            url,
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_false_never_serves_an_unmigrated_schema() {
    let db = TestDb::unmigrated().await;
    let argv = args(&db, &env_name(), &["--migrate=false"]);

    // The issue: /readyz said 200 while every call answered 500. Now the
    // process does not start at all, and says why and what to do.
    let run = run_bounded(scaling_service(&argv), Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    let said = run.output();
    assert!(
        said.contains("schema is behind") && said.contains("--migrate=true"),
        "{said}"
    );
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!tracked, "--migrate=false changed the schema");

    // Once the migration step has run, --migrate=false starts and is ready.
    berth_common::db::migrate(&db.pool).await.unwrap();
    let scaler = Running::start(argv, &[]).await;
    let ready = reqwest::get(format!("{}/readyz", scaler.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    drop(scaler);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_development_tokens_must_name_their_issuer_and_audience() {
    let db = TestDb::new().await;
    let without = |env: &str, keep: &str| -> Vec<String> {
        let mut argv = args(&db, env, &[]);
        for flag in ["--auth-issuer", "--auth-audience"]
            .iter()
            .filter(|f| **f != keep)
        {
            let i = argv.iter().position(|a| a == flag).unwrap();
            argv.drain(i..i + 2);
        }
        argv
    };
    for (keep, missing) in [("", "issuer and audience"), ("--auth-issuer", "audience")] {
        let run = run_bounded(
            scaling_service(&without("prod-eu", keep)),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(run.code, Some(78), "{run:?}");
        let said = run.output();
        assert!(
            said.contains(&format!("checks no {missing}"))
                && said.contains("BERTH_AUTH_ISSUER")
                && said.contains("BERTH_AUTH_AUDIENCE"),
            "{said}"
        );
    }
    // A development environment may leave them unset.
    let scaler = Running::start(without(&format!("dev-{}", env_name()), ""), &[]).await;
    let ready = reqwest::get(format!("{}/readyz", scaler.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    drop(scaler);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launching_on_ec2_needs_the_url_hosts_reach_the_control_plane_at() {
    let db = TestDb::new().await;
    let mut argv = args(&db, "prod-eu", &[]);
    let i = argv.iter().position(|a| a == "--control-url").unwrap();
    argv.drain(i..i + 2);
    let run = run_bounded(scaling_service(&argv), Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(
        run.output().contains("BERTH_CONTROL_URL is not set"),
        "{}",
        run.output()
    );
    // Plain http to anything but loopback is a usage error.
    let argv = with(
        args(&db, "prod-eu", &[]),
        "--control-url",
        "http://berth-control.internal:8080",
    );
    let run = run_bounded(scaling_service(&argv), Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(64), "{run:?}");
    assert!(
        run.stderr.contains("only for a loopback control plane"),
        "{}",
        run.stderr
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_takes_only_true_or_false() {
    let db = TestDb::new().await;
    let argv = args(&db, &env_name(), &["--migrate=no"]);
    let run = run_bounded(scaling_service(&argv), Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(64), "{run:?}");
    assert!(
        run.stderr.contains("invalid value 'no' for '--migrate")
            && run.stderr.contains("possible values: true, false"),
        "{}",
        run.stderr
    );
    let mut from_env = scaling_service(&args(&db, &env_name(), &[]));
    from_env.env("BERTH_MIGRATE", "yes");
    let run = run_bounded(from_env, Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(64), "BERTH_MIGRATE=yes: {run:?}");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_say_what_to_check_and_exit_by_kind() {
    use berth_testing::database_url_with;
    let db = TestDb::new().await;
    let argv = args(&db, &env_name(), &[]);

    let refused = with(
        argv.clone(),
        "--database-url",
        &database_url_with(|o| o.port(closed_port())),
    );
    let run = run_bounded(scaling_service(&refused), Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(1), "an outage is worth a restart: {run:?}");
    assert!(
        run.elapsed < Duration::from_secs(3),
        "took {:?}",
        run.elapsed
    );
    assert!(
        run.output().contains("refused the connection"),
        "{}",
        run.output()
    );

    let wrong_password = with(
        argv,
        "--database-url",
        &database_url_with(|o| o.password("not-the-password")),
    );
    let run = run_bounded(scaling_service(&wrong_password), Duration::from_secs(20)).await;
    assert_eq!(
        run.code,
        Some(78),
        "restarting cannot fix a password: {run:?}"
    );
    assert!(
        run.output()
            .contains("check the user and password in DATABASE_URL"),
        "{}",
        run.output()
    );
    db.drop_database().await;

    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/scaling-service.service"
    ))
    .unwrap();
    assert!(
        unit.lines()
            .any(|l| l.trim() == "RestartPreventExitStatus=64 78"),
        "scaling-service.service must not restart on 64 or 78"
    );
}

/// Whether the scaler's output mentions instance metadata at all.
fn mentions_imds(output: &str) -> bool {
    let lower = output.to_lowercase();
    [
        "imds",
        "169.254.169.254",
        "instance metadata",
        "ec2 metadata",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_off_ec2_never_probes_instance_metadata() {
    let db = TestDb::new().await;
    // A region without a buffer: each controller pass (every second) lists
    // its instances, so credentials are needed, but nothing is launched.
    region(&db, 0, 0, 2).await;
    let local_dir = std::env::temp_dir().join(format!("berth-local-{}", env_name()));
    // Were the SDK to probe IMDS, it would find this closed port at once and
    // say so, instead of waiting for 169.254.169.254 to time out.
    let imds = format!("http://127.0.0.1:{}", closed_port());
    // No profile of the machine's may name a region or credentials.
    let empty = std::env::temp_dir().join(format!("berth-aws-{}", env_name()));
    std::fs::write(&empty, "").unwrap();
    let no_files = empty.to_str().unwrap();
    let common = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(imds.as_str())),
        ("AWS_CONFIG_FILE", Some(no_files)),
        ("AWS_SHARED_CREDENTIALS_FILE", Some(no_files)),
        ("AWS_REGION", None),
        ("AWS_DEFAULT_REGION", None),
        ("AWS_PROFILE", None),
    ];
    let keys = [
        ("AWS_ACCESS_KEY_ID", Some("testing")),
        ("AWS_SECRET_ACCESS_KEY", Some("testing")),
    ];
    let no_keys = [("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)];
    // (what, arguments, environment: a variable set, or None to remove it)
    type Case<'a> = (&'a str, Vec<String>, Vec<(&'a str, Option<&'a str>)>);
    let cases: [Case<'_>; 3] = [
        (
            "aws provider, emulator endpoint, keys, no region",
            args(&db, &env_name(), &[]),
            [&common[..], &keys[..]].concat(),
        ),
        (
            "aws provider, emulator endpoint, no keys, no region",
            args(&db, &env_name(), &[]),
            [&common[..], &no_keys[..]].concat(),
        ),
        (
            "local provider",
            args(
                &db,
                &env_name(),
                &[
                    "--provider",
                    "local",
                    "--local-dir",
                    &local_dir.display().to_string(),
                ],
            ),
            [&common[..], &no_keys[..]].concat(),
        ),
    ];
    for (what, argv, env) in cases {
        let scaler = Running::start(argv, &env).await;
        let ready = reqwest::get(format!("{}/readyz", scaler.url))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{what}");
        // Two controller passes, each listing the region's instances.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let output = scaler.output();
        assert!(
            output.contains("scaling-service serving"),
            "{what}: the log is captured: {output}"
        );
        assert!(
            !mentions_imds(&output),
            "{what}: the scaler probed instance metadata:\n{output}"
        );
        assert!(
            !output.contains('\u{1b}'),
            "{what}: colour codes in a log that goes to a pipe:\n{output}"
        );
    }
    berth_testing::remove_tree(&local_dir);
    let _ = std::fs::remove_file(&empty);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_name_the_user_token_and_the_allowed_methods() {
    let db = TestDb::new().await;
    let scaler = Running::start(args(&db, &env_name(), &[]), &[]).await;
    let http = reqwest::Client::new();

    // No token: the scaler wants the user's JWT (session tokens are for hosts).
    let response = http
        .get(format!("{}/sessions", scaler.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("user JWT") && !message.contains("session token"),
        "{body}"
    );

    let cases = [
        (reqwest::Method::PUT, "/sessions", "GET, POST"),
        (reqwest::Method::POST, "/sessions/abc", "GET, DELETE"),
        (reqwest::Method::GET, "/mandelbox/assign", "POST"),
        (reqwest::Method::POST, "/regions", "GET"),
        (reqwest::Method::DELETE, "/runtimes", "GET"),
        (reqwest::Method::POST, "/readyz", "GET"),
    ];
    for (method, path, allow) in cases {
        let response = http
            .request(method.clone(), format!("{}{path}", scaler.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
    drop(scaler);
    db.drop_database().await;
}
