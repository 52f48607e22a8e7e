//! How the daemon, run as systemd runs it, fails to start: a wrong setting
//! exits 64 (usage) or 78 (configuration; the unit does not restart it) with a
//! message saying what to fix, an unreachable control plane exits 1 quickly
//! (the unit retries), and `host-service drain` of a host that never
//! registered fails. Registration spends the bootstrap token once; the host
//! credential (0600 in the state dir) registers every later start.

#[path = "host_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use berth_testing::{closed_port, run_bounded, Finished};
use support::*;
use uuid::Uuid;

/// host-service with these arguments (argv[0] excluded), run to its end.
async fn host_service(args: &[String], env: &[(&str, &str)]) -> Finished {
    let mut command = Command::new(host_binary());
    command.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    run_bounded(command, Duration::from_secs(60)).await
}

/// Arguments of a local host of `db`'s control plane, with `flag`'s value
/// replaced where given.
async fn local_args(db: &TestDb, replace: &[(&str, &str)]) -> (String, Vec<String>) {
    let host_id = format!("t-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let state_dir = std::env::temp_dir().join(format!("berth-state-{host_id}"));
    let mut argv = host_args(db, &HostArgs::default(), &host_id, &state_dir).await;
    argv.remove(0);
    for (flag, value) in replace {
        let at = argv.iter().position(|a| a == flag).unwrap() + 1;
        argv[at] = value.to_string();
    }
    (host_id, argv)
}

fn state_dir_of(host_id: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("berth-state-{host_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booleans_take_only_true_or_false() {
    let db = TestDb::new().await;
    for (flag, env) in [
        ("--local=no", None),
        ("--local=1", None),
        ("--local=yes", None),
        ("drain", Some(("BERTH_LOCAL", "no"))),
    ] {
        let (_, mut argv) = local_args(&db, &[]).await;
        let at = argv.iter().position(|a| a == "--local").unwrap();
        if flag.starts_with("--local") {
            argv[at] = flag.to_owned();
        } else {
            argv.remove(at);
            argv.push(flag.to_owned());
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
async fn plain_http_is_accepted_only_for_a_loopback_control_plane() {
    let db = TestDb::new().await;
    for (url, says) in [
        (
            "http://10.1.2.3:8080",
            "plain http is accepted only for a loopback control plane",
        ),
        ("ftp://127.0.0.1:8080", "use https://"),
        ("not a url", "is not a URL"),
    ] {
        let (_, argv) = local_args(&db, &[("--control-url", url)]).await;
        let run = host_service(&argv, &[]).await;
        assert_eq!(run.code, Some(64), "{url}: {run:?}");
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_control_plane_listening_fails_quickly_with_the_cause_and_exit_1() {
    let db = TestDb::new().await;
    let url = format!("http://127.0.0.1:{}", closed_port());
    let (host_id, argv) = local_args(&db, &[("--control-url", &url)]).await;
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(1), "an outage is worth a restart: {run:?}");
    assert!(
        run.elapsed < Duration::from_secs(15),
        "took {:?}: a refused connection must not be waited on for minutes",
        run.elapsed
    );
    let said = run.output();
    assert!(
        said.contains("could not be reached") && said.contains("BERTH_CONTROL_URL"),
        "{said}"
    );
    berth_testing::remove_tree(&state_dir_of(&host_id));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_errors_exit_78_so_systemd_stops_restarting() {
    let db = TestDb::new().await;
    // A token the control plane never issued, and none at all.
    let (host_id, argv) = local_args(&db, &[("--host-token", "not-a-bootstrap-token")]).await;
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    let said = run.output();
    assert!(
        said.contains("REGISTRATION_REFUSED") && said.contains("scaling-service host-token"),
        "{said}"
    );
    assert!(
        !said.contains("not-a-bootstrap-token"),
        "the token is never printed: {said}"
    );
    berth_testing::remove_tree(&state_dir_of(&host_id));

    let (host_id, mut argv) = local_args(&db, &[]).await;
    let at = argv.iter().position(|a| a == "--host-token").unwrap();
    argv.drain(at..at + 2);
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(
        run.output().contains("BERTH_HOST_TOKEN"),
        "{}",
        run.output()
    );
    berth_testing::remove_tree(&state_dir_of(&host_id));
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
async fn the_bootstrap_token_registers_once_and_the_credential_every_restart() {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let th = start_host(&db, HostArgs::default()).await;
    let credential = th.state_dir.join("host-credential");
    let mode = std::fs::metadata(&credential).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credential is root's alone");
    let kept = std::fs::read_to_string(&credential).unwrap();
    let on_row: Option<String> =
        sqlx::query_scalar("SELECT credential_sha256 FROM hosts WHERE id = $1")
            .bind(&th.host_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        on_row.as_deref(),
        Some(berth_common::auth::token_sha256_hex(kept.trim()).as_str()),
        "only the credential's hash is stored"
    );
    let spent: Option<String> =
        sqlx::query_scalar("SELECT bootstrap_sha256 FROM hosts WHERE id = $1")
            .bind(&th.host_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(spent, None, "the bootstrap token dies at first use");

    // A restart with the same (spent) token registers with the credential.
    let TestHost {
        daemon,
        host_id,
        state_dir,
        args,
        ..
    } = th;
    daemon.unwrap().stop().await;
    let again = start_with(args.clone(), host_id.clone(), state_dir.clone()).await;
    assert_eq!(
        std::fs::read_to_string(&credential).unwrap(),
        kept,
        "the same credential"
    );
    again.cleanup().await;

    // Without the credential, the spent token is refused.
    let mut argv = args;
    argv.remove(0);
    let other_state = state_dir_of(&format!("{host_id}-copy"));
    let at = argv.iter().position(|a| a == "--state-dir").unwrap() + 1;
    argv[at] = other_state.display().to_string();
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(
        run.output().contains("REGISTRATION_REFUSED"),
        "{}",
        run.output()
    );
    berth_testing::remove_tree(&other_state);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_a_host_that_never_registered_fails() {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let (host_id, mut argv) = local_args(&db, &[]).await;
    argv.push("drain".into());
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(78), "{run:?}");
    let said = run.output();
    assert!(
        said.contains("has not registered yet") && said.contains("nothing to drain"),
        "the message says why: {said}"
    );

    // A registered host is drained, once; a second drain is a no-op, not an error.
    let th = start_host(&db, HostArgs::default()).await;
    let mut argv = th.args.clone();
    argv.remove(0);
    argv.push("drain".into());
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("marked DRAINING"), "{run:?}");
    let run = host_service(&argv, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("already"), "{run:?}");
    th.cleanup().await;
    berth_testing::remove_tree(&state_dir_of(&host_id));
    db.drop_database().await;
}
