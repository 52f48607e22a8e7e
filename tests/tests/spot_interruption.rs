//! A spot interruption end to end: the scaling service with the local
//! provider, whose hosts read their own IMDSv2 server (as on EC2), real
//! Docker and PostgreSQL. The test serves a spot `instance-action` notice to
//! one host, as EC2 does two minutes before it takes an instance back.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_drains_the_host_warns_its_sessions_replaces_it_and_ends_them_as_interrupted()
{
    let _one = ONE_AT_A_TIME.lock().await;
    // Two hosts of two slots keep the region's three free slots.
    let system = System::start(3, 3).await;
    system.warm(2, 4).await;
    let alice = system.user("alice");
    let (assigned, _token, _) = running_session(&alice, "spot-1").await;
    let host = assigned.host.id.clone();
    let id = assigned.session_id.clone();

    let at = chrono::Utc::now() + chrono::Duration::seconds(15);
    let notice = serde_json::json!({
        "action": "terminate",
        "time": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let noticed = Instant::now();
    assert!(system.local.set_metadata(
        &host,
        "/latest/meta-data/spot/instance-action",
        Some(&notice.to_string())
    ));

    // Within one poll period (5 s) the host drains and says why.
    system
        .wait(
            "the interrupted host to drain",
            Duration::from_secs(8),
            &format!("SELECT count(*) FROM hosts WHERE id = '{host}' AND status = 'DRAINING' AND status_reason LIKE 'spot interruption%'"),
            1,
        )
        .await;
    assert!(noticed.elapsed() < Duration::from_secs(8));

    // The session is warned with the notice's time, in the app and for its user.
    berth_testing::eventually("the app to be warned", Duration::from_secs(5), || async {
        let out = std::process::Command::new("docker")
            .args(["exec", &format!("berth-{id}"), "cat", "/berth/warning.json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|w| {
            w["reason"] == "INTERRUPTION"
                && w["ends_at"] == at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    })
    .await;
    berth_testing::eventually(
        "the user to see the coming end",
        Duration::from_secs(5),
        || async {
            alice.session(&id).await.is_ok_and(|s| {
                s["end_warning"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("INTERRUPTION"))
            })
        },
    )
    .await;

    // The scheduler replaces the host's capacity while it is still there.
    system
        .wait(
            "a third host, replacing the interrupted one's slots",
            Duration::from_secs(30),
            &format!("SELECT count(*) FROM hosts WHERE id <> '{host}' AND status = 'ACTIVE'"),
            2,
        )
        .await;
    let interrupted_still_there: i64 = system
        .count(&format!(
            "SELECT count(*) FROM hosts WHERE id = '{host}' AND status = 'DRAINING'"
        ))
        .await;
    assert_eq!(
        interrupted_still_there, 1,
        "replaced before the interrupted host is gone"
    );

    // At the notice's time the session ends, and its user is told why.
    system
        .wait(
            "the session to end at the interruption",
            Duration::from_secs(30),
            &format!("SELECT count(*) FROM session_history WHERE id = '{id}' AND outcome = 'INTERRUPTED'"),
            1,
        )
        .await;
    assert!(
        chrono::Utc::now() >= at - chrono::Duration::seconds(1),
        "ended at the notice's time, not before"
    );
    let ended = alice.session(&id).await.unwrap();
    assert_eq!(ended["status"], "INTERRUPTED", "{ended}");
    system.stop().await;
}
