//! PostgreSQL restarted under a running daemon. The only test in its binary:
//! cargo runs test binaries one at a time, so restarting the shared server
//! disturbs nobody else. Needs root and a Debian cluster (scripts/setup).

#[path = "host_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_no_allocation_and_heartbeats_resume() {
    let (db, th) = warm_host(2, &["--heartbeat-secs", "1"]).await;
    match berth_testing::postgres_cluster("restart") {
        None => {
            eprintln!("SKIPPED a_postgres_restart_loses_no_allocation_and_heartbeats_resume: no Debian PostgreSQL cluster (pg_lsclusters) serves DATABASE_URL; run scripts/test");
            th.cleanup().await;
            return;
        }
        Some(restarted) => assert!(restarted, "restarting the PostgreSQL cluster failed"),
    }
    // Allocate the moment the server is back, while the daemon's LISTEN
    // connection is still reconnecting: its notification is likely lost, and
    // only the resync after the reconnect can find the allocation.
    let started = Instant::now();
    let (id, token) = loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&db.pool),
        )
        .await
        {
            Ok(Ok(_)) => break allocate(&db.pool, &th.host_id, "after-restart").await,
            _ if started.elapsed() > Duration::from_secs(60) => {
                panic!("PostgreSQL did not come back within 60 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    eventually(
        "the allocation made during the reconnect to be claimed",
        Duration::from_secs(30),
        || async { session_status(&db.pool, id).await.as_deref() == Some("CONNECTING") },
    )
    .await;
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT last_heartbeat_at FROM hosts WHERE id = $1")
            .bind(&th.host_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    eventually("heartbeats to resume", Duration::from_secs(10), || async {
        let now: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT last_heartbeat_at FROM hosts WHERE id = $1")
                .bind(&th.host_id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        now > before
    })
    .await;
    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(response.status(), 200, "the daemon's pool works again");
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("RUNNING")
    );
    th.cleanup().await;
}
