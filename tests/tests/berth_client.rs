//! berth-client against the real system: a region the scaler does not have
//! is an immediate, explained failure, not a wait of `--wait-secs`.

mod support;

use std::process::Command;
use std::time::Duration;

use berth_testing::run_bounded;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_region_fails_at_once_naming_the_known_ones() {
    let _one = ONE_AT_A_TIME.lock().await;
    // No buffer and no hosts allowed: nothing is ever launched.
    let system = System::start(0, 0).await;
    sqlx::query(
        "INSERT INTO regions (name, target_free_slots, max_hosts) VALUES ('eu-test', 0, 0)",
    )
    .execute(&system.db.pool)
    .await
    .unwrap();

    let mut client = Command::new(env!("CARGO_BIN_EXE_berth-client"));
    client
        .args(["--scaler", &system.url, "--hs256-secret", SECRET])
        .args(["--operator-token", berth_testing::OPERATOR_TOKEN])
        .args(["demo", "--region", "nowhere"]);
    // It used to wait --wait-secs (240 s by default) before giving up.
    let run = run_bounded(client, Duration::from_secs(20)).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
    assert!(
        run.stderr.contains("\"nowhere\"")
            && run.stderr.contains("eu-test, local")
            && run.stderr.contains("--region"),
        "names the region, lists the known ones, says what to do: {}",
        run.stderr
    );
    system.stop().await;
}
