//! Liveness on the real parts: a database outage under load (with the scaler
//! restarted while it lasts) or a frozen daemon must not cost a healthy host or a user's
//! session. These tests stop the shared PostgreSQL server, so they are alone in
//! this binary (cargo runs test binaries one at a time) and run one at a time.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testing::postgres_cluster;
use berth_tests::client::ScalerClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// How long PostgreSQL stays down: 10× the heartbeat grace and 3× the
/// unreachable grace used here, so silence alone would condemn every host.
/// `BERTH_TEST_PG_OUTAGE_SECS=120` runs the production-sized outage.
fn outage() -> Duration {
    let secs = std::env::var("BERTH_TEST_PG_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Assign for `csid`, retrying while no warm session is free; the host it got.
async fn assign_host(system: &System, user: &ScalerClient, csid: &str, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        match user.assign("desktop", &[REGION], Some(csid)).await {
            Ok(a) => return a.host.id,
            Err(e) => {
                if started.elapsed() > limit {
                    panic!(
                        "no assign within {limit:?}: {e}\nthe fleet:\n{}",
                        system.describe().await
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn app_answers(port: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{port}/config.json"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_is_unreachable_not_dead_and_keeps_its_sessions() {
    let _one = ONE_AT_A_TIME.lock().await;
    let system = System::start_with(4, 3, None, &["--unreachable-grace-secs", "600"]).await;
    system.warm(2, 4).await;
    let alice = system.user("alice");
    let (assigned, _token, port) = running_session(&alice, "frozen-1").await;
    let frozen = assigned.host.id.clone();
    let pid = Pid::from_raw(system.host_pid(&frozen));

    let stopped_at = Instant::now();
    kill(pid, Signal::SIGSTOP).unwrap();
    system
        .wait(
            "the frozen host to be UNREACHABLE",
            Duration::from_secs(30),
            &format!("SELECT count(*) FROM hosts WHERE id = '{frozen}' AND status = 'UNREACHABLE'"),
            1,
        )
        .await;
    let view = alice.session(&assigned.session_id).await.unwrap();
    assert_eq!(view["status"], "RUNNING", "{view}");
    assert!(
        view["status_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("host unreachable since")),
        "the user is told why: {view}"
    );
    // While it is unreachable no assign picks it.
    let bob = system.user("bob");
    for i in 0..2 {
        let host = assign_host(&system, &bob, &format!("bob-{i}"), Duration::from_secs(60)).await;
        assert_ne!(host, frozen, "an assign picked the unreachable host");
    }
    // Frozen for at least 3 heartbeat periods in all.
    let frozen_for = Duration::from_secs(3).saturating_sub(stopped_at.elapsed());
    tokio::time::sleep(frozen_for).await;
    kill(pid, Signal::SIGCONT).unwrap();

    system
        .wait(
            "the host to be ACTIVE again",
            Duration::from_secs(30),
            &format!("SELECT count(*) FROM hosts WHERE id = '{frozen}' AND status = 'ACTIVE'"),
            1,
        )
        .await;
    assert!(app_answers(port).await, "the session's app still answers");
    let view = alice.session(&assigned.session_id).await.unwrap();
    assert_eq!(view["status"], "RUNNING", "{view}");
    assert_eq!(
        system.count("SELECT count(*) FROM session_history").await,
        0,
        "no session ended"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_and_a_scaler_restart_cost_no_host_and_no_session() {
    let _one = ONE_AT_A_TIME.lock().await;
    if postgres_cluster("status").is_none() {
        eprintln!("SKIPPED a_database_outage_and_a_scaler_restart_cost_no_host_and_no_session: no Debian PostgreSQL cluster (pg_lsclusters) serves DATABASE_URL; run scripts/test");
        return;
    }
    let mut system = System::start_with(4, 3, None, &["--unreachable-grace-secs", "10"]).await;
    system.warm(2, 4).await;
    let (a, _, port_a) = running_session(&system.user("alice"), "outage-a").await;
    let (b, _, port_b) = running_session(&system.user("bob"), "outage-b").await;
    let hosts_before: Vec<String> =
        sqlx::query_scalar("SELECT id FROM hosts WHERE status = 'ACTIVE' ORDER BY id")
            .fetch_all(&system.db.pool)
            .await
            .unwrap();

    // Load all along: a client assigning and deleting sessions in a loop,
    // against whichever scaler is up (its URL changes with the restart).
    let load = Load::start(&system.url);
    load.served_beyond(0, Duration::from_secs(30), &system)
        .await;

    let outage = outage();
    eprintln!("stopping PostgreSQL for {outage:?}");
    assert_eq!(postgres_cluster("stop"), Some(true), "stopping PostgreSQL");
    // The faults are the scenario's length, not something to await.
    tokio::time::sleep(outage / 2).await;
    system.stop_scaler().await;
    tokio::time::sleep(outage / 2).await;
    assert!(
        app_answers(port_a).await && app_answers(port_b).await,
        "apps serve without the database"
    );
    assert_eq!(postgres_cluster("start"), Some(true), "starting PostgreSQL");
    let back = Instant::now();
    system.restart_scaler(Duration::from_secs(60)).await;
    load.point_at(&system.url);
    let served_before = load.served();

    // Assigns resume within 10 s of the database's return.
    let carol = system.user("carol");
    assign_host(&system, &carol, "after-outage", Duration::from_secs(10)).await;
    eprintln!(
        "first assign {:?} after the database came back",
        back.elapsed()
    );

    // Well past the heartbeat grace and the unreachable grace of the silence
    // during the outage: every host is still there and ACTIVE.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        let gone: i64 = system
            .count(&format!(
                "SELECT {} - count(*) FROM hosts WHERE id IN ('{}') AND status IN ('ACTIVE', 'UNREACHABLE')",
                hosts_before.len(),
                hosts_before.join("','")
            ))
            .await;
        assert_eq!(gone, 0, "a host was condemned after the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let active: i64 = system
        .count(&format!(
            "SELECT count(*) FROM hosts WHERE id IN ('{}') AND status = 'ACTIVE'",
            hosts_before.join("','")
        ))
        .await;
    assert_eq!(active as usize, hosts_before.len(), "every host is ACTIVE");
    // The restarted scaler listens on a new port: new clients, same users.
    for (user, session, port) in [
        ("alice", &a.session_id, port_a),
        ("bob", &b.session_id, port_b),
    ] {
        let view = system.user(user).session(session).await.unwrap();
        assert_eq!(view["status"], "RUNNING", "{view}");
        assert!(app_answers(port).await, "session {session} answers");
    }
    load.served_beyond(served_before, Duration::from_secs(10), &system)
        .await;
    eprintln!("{} load cycles served", load.stop().await);
    assert_eq!(
        system
            .count("SELECT count(*) FROM session_history WHERE user_id <> 'loader' OR outcome <> 'DELETED'")
            .await,
        0,
        "no session ended but the load's own deletes"
    );
    system.stop().await;
}

/// A client assigning and deleting sessions over and over against whichever
/// scaler it is pointed at, counting the cycles served and keeping the last
/// failure (what a test that waits for it prints).
struct Load {
    url: Arc<Mutex<String>>,
    served: Arc<AtomicUsize>,
    last_failure: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: &str) -> Self {
        let url = Arc::new(Mutex::new(url.to_owned()));
        let served = Arc::new(AtomicUsize::new(0));
        let last_failure = Arc::new(Mutex::new(String::from("none")));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(Self::cycle(
            url.clone(),
            served.clone(),
            last_failure.clone(),
            stop.clone(),
        ));
        Self {
            url,
            served,
            last_failure,
            stop,
            task,
        }
    }

    async fn cycle(
        url: Arc<Mutex<String>>,
        served: Arc<AtomicUsize>,
        last_failure: Arc<Mutex<String>>,
        stop: Arc<AtomicBool>,
    ) {
        let token = berth_tests::client::dev_user_token(
            SECRET,
            "loader",
            None,
            None,
            Duration::from_secs(3600),
        );
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let current = url.lock().unwrap().clone();
            let client = ScalerClient::new(&current, &token);
            let started = Instant::now();
            let outcome = match client
                .assign("desktop", &[REGION], Some(&format!("load-{n}")))
                .await
            {
                Ok(a) => client.delete(&a.session_id).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    *last_failure.lock().unwrap() = format!(
                        "cycle {n} against {current} after {:?}: {e}",
                        started.elapsed()
                    )
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn point_at(&self, url: &str) {
        *self.url.lock().unwrap() = url.to_owned();
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    async fn served_beyond(&self, count: usize, limit: Duration, system: &System) {
        let started = Instant::now();
        while self.served() <= count {
            if started.elapsed() > limit {
                let failure = self.last_failure.lock().unwrap().clone();
                panic!(
                    "the load was not served within {limit:?}; its last failure: {failure}\nthe fleet:\n{}",
                    system.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the loop; the cycles it served.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let served = self.served.clone();
        let _ = self.task.await;
        served.load(Ordering::SeqCst)
    }
}
