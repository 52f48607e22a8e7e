//! The demand-aware policy on real parts: assigns recorded as demand by the
//! database's triggers, counted as the replay simulator counts them,
//! exported as a trace; and the real service's controllers, on moto EC2,
//! launching ahead of a burst's repeat and scaling down after it, on a
//! region whose "day" is 24 seconds.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scaling_service::forecast::{DemandQuery, ForecastSettings};
use scaling_service::service;
use scaling_service::trace::Trace;
use serde_json::{json, Value};
use support::*;

const MAX_HOSTS: i64 = 4;
const PERIOD_S: i64 = 24;
const HORIZON_S: i64 = 6;
/// How long a launched "instance" takes to register (the agent below).
const BOOT: Duration = Duration::from_secs(2);

async fn assign_over_http(
    http: &reqwest::Client,
    base: &str,
    user: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = http
        .post(format!("{base}/sessions"))
        .bearer_auth(jwt(user, AUDIENCE, 300))
        .json(&json!({"runtime": "desktop", "regions": [REGION], "client_commit": "sha-1"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// What hosts do on their own: register (ACTIVE, every slot warm) a boot
/// after their launch, and finish draining once empty. Also watches that
/// the region never holds more than its cap, in rows and in EC2.
fn host_agent(
    db: &TestDb,
    aws: Arc<scaling_service::provider::aws::AwsProvider>,
    env: String,
    stop: Arc<AtomicBool>,
    most: Arc<AtomicI64>,
) -> tokio::task::JoinHandle<()> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let booted: Vec<String> = sqlx::query_scalar(
                "UPDATE hosts SET status = 'ACTIVE', registered_at = now(), last_heartbeat_at = now(), \
                        public_ip = '127.0.0.1', api_port = 4678, cert_sha256 = repeat('a', 64) \
                 WHERE status = 'PRE_CONNECTION' AND launched_at < now() - make_interval(secs => $1) RETURNING id",
            )
            .bind(BOOT.as_secs_f64())
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for id in booted {
                let _ = sqlx::query(
                    "INSERT INTO sessions (id, host_id, runtime) \
                     SELECT gen_random_uuid(), id, 'desktop' FROM hosts, generate_series(1, capacity) WHERE id = $1",
                )
                .bind(id)
                .execute(&pool)
                .await;
            }
            let _ = sqlx::query(
                "UPDATE hosts SET status = 'TERMINATING' WHERE status = 'DRAINING' AND free_slots = capacity",
            )
            .execute(&pool)
            .await;
            let rows: i64 =
                sqlx::query_scalar("SELECT count(*) FROM hosts WHERE status <> 'TERMINATED'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            let cloud = live_cloud(aws.as_ref(), &env).await.len() as i64;
            most.fetch_max(rows.max(cloud), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn serving_hosts(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM hosts WHERE status IN ('ACTIVE', 'PRE_CONNECTION')")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn end_user_sessions(db: &TestDb) {
    // What a host's teardown report does for each.
    sqlx::query("DELETE FROM sessions WHERE user_id IS NOT NULL")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn db_now(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_region_launches_ahead_of_a_bursts_repeat_and_scales_down_after_it() {
    let db = TestDb::new().await;
    region(&db, 6, MAX_HOSTS as i32, 2).await;
    // A 24 s "day", a 6 s boot horizon, one past period to learn from.
    sqlx::query(
        "UPDATE regions SET policy = 'forecast', forecast_period_s = $1, forecast_horizon_s = $2, \
                forecast_history_periods = 1, forecast_bucket_s = 0, forecast_recent_s = 5, \
                forecast_hit_rate = 0.9, scale_down_grace_s = 1",
    )
    .bind(PERIOD_S as i32)
    .bind(HORIZON_S as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    let env = env_name();
    let aws = aws().await;
    let svc = service::start_with_provider(config(&db, &env, &[]), aws.clone())
        .await
        .unwrap();
    let (stop, most) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicI64::new(0)),
    );
    let agent = host_agent(&db, aws.clone(), env.clone(), stop.clone(), most.clone());
    let base = format!("http://{}", svc.addr);
    let http = reqwest::Client::new();

    // The first burst: the floor (target_free_slots 6) warms 3 hosts for it.
    eventually(
        "6 warm slots for the first burst",
        Duration::from_secs(20),
        || async {
            let free: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(free_slots), 0) FROM hosts WHERE status = 'ACTIVE'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            free >= 6
        },
    )
    .await;
    let burst = |round: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let calls = (0..6).map(|i| {
                let (http, base) = (http.clone(), base.clone());
                async move { assign_over_http(&http, &base, &format!("{round}-{i}")).await }
            });
            futures_util::future::join_all(calls).await
        }
    };
    for answer in burst("first").await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let t0: DateTime<Utc> = sqlx::query_scalar("SELECT min(assigned_at) FROM assigns")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // From now on only the forecast keeps slots: no floor.
    sqlx::query("UPDATE regions SET target_free_slots = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    end_user_sessions(&db).await;

    eventually(
        "the region scales down after the first burst",
        Duration::from_secs(14),
        || async { serving_hosts(&db).await == 0 },
    )
    .await;
    let quiet_at = db_now(&db).await;
    let repeat_at = t0 + chrono::Duration::seconds(PERIOD_S);
    assert!(
        quiet_at < repeat_at - chrono::Duration::seconds(HORIZON_S),
        "scaled down only at {quiet_at}, after the forecast should have launched (repeat at {repeat_at})"
    );

    // Ahead of the repeat, with nobody asking: the history says it comes.
    eventually(
        "a launch ahead of the repeat",
        Duration::from_secs(PERIOD_S as u64),
        || async {
            let launched: i64 =
                sqlx::query_scalar("SELECT count(*) FROM launches WHERE created_at > $1")
                    .bind(quiet_at)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            launched > 0
        },
    )
    .await;
    let first_launch: DateTime<Utc> =
        sqlx::query_scalar("SELECT min(created_at) FROM launches WHERE created_at > $1")
            .bind(quiet_at)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        first_launch < repeat_at,
        "launched at {first_launch}, not ahead of the repeat at {repeat_at}"
    );
    assert!(
        first_launch >= repeat_at - chrono::Duration::seconds(HORIZON_S + 2),
        "launched at {first_launch}, long before the horizon of the repeat at {repeat_at}"
    );

    // GET /regions says what it forecast and why.
    let regions: Value = http
        .get(format!("{base}/regions"))
        .bearer_auth(berth_testing::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let region = &regions["regions"][0];
    assert_eq!(region["policy"], "forecast", "{regions}");
    assert!(
        region["forecast"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("arrivals expected")),
        "{regions}"
    );

    // The repeat finds its slots warm.
    let wait = (repeat_at - db_now(&db).await).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let answers = burst("repeat").await;
    let warm = answers.iter().filter(|a| matches!(a, Ok((201, _)))).count();
    assert_eq!(
        warm, 6,
        "every user of the repeat got a warm slot: {answers:?}"
    );
    end_user_sessions(&db).await;
    eventually(
        "the region scales down after the repeat",
        Duration::from_secs(15),
        || async { serving_hosts(&db).await == 0 },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    agent.await.unwrap();
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= MAX_HOSTS,
        "{most} instances at once, above max_hosts {MAX_HOSTS}"
    );
    assert!(most >= 3, "the bursts' hosts were seen ({most})");
    svc.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_counts_demand_in_the_forecasts_windows_as_the_replay_does() {
    let db = TestDb::new().await;
    region(&db, 0, 10, 2).await;
    let settings = ForecastSettings {
        period_s: 600,
        horizon_s: 60,
        history_periods: 3,
        bucket_s: 120,
        recent_s: 50,
        ..ForecastSettings::default()
    };
    let now = db_now(&db).await;
    // Arrivals spread over the last 40 minutes, two on window edges, and
    // another region's arrivals that must not count.
    let mut offsets: Vec<i64> = (0..2400).step_by(37).collect();
    offsets.extend([600, 600 - 60, 10]);
    for (i, back) in offsets.iter().enumerate() {
        for region in [REGION, "eu-west-1"] {
            sqlx::query(
                "INSERT INTO assigns (session_id, region, runtime, assigned_at) VALUES (gen_random_uuid(), $1, 'desktop', $2)",
            )
            .bind(region)
            .bind(now - chrono::Duration::seconds(*back) - chrono::Duration::milliseconds(i as i64 % 3))
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
    let from_db = scaling_service::demand::read(&db.pool, REGION, &settings, now)
        .await
        .unwrap();
    let times: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT assigned_at FROM assigns WHERE region = $1 ORDER BY assigned_at",
    )
    .bind(REGION)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let query = DemandQuery::new(&settings, now, times.first().copied());
    let counts: Vec<u32> = query
        .windows
        .iter()
        .map(|(s, e)| times.iter().filter(|t| *t >= s && *t < e).count() as u32)
        .collect();
    assert_eq!(from_db, query.view(&counts));
    assert_eq!(from_db.past.len(), 3, "{from_db:?}");
    assert!(from_db.recent > 0 && from_db.past.iter().all(|p| p.smooth > 0));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_assign_is_recorded_as_demand_and_exported_as_a_replayable_trace() {
    let db = TestDb::new().await;
    region(&db, 0, 10, 2).await;
    let env = env_name();
    let scaler = scaler(&db, &env, aws().await, &[]).await;
    sqlx::query(
        "INSERT INTO hosts (id, region, image_id, client_sha, instance_type, capacity, free_slots, status, public_ip, api_port, cert_sha256, last_heartbeat_at) \
         VALUES ('i-00000001', $1, 'ami-11111111', 'sha-1', 't3.large', 2, 2, 'ACTIVE', '127.0.0.1', 4678, repeat('a', 64), now())",
    )
    .bind(REGION)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO sessions (id, host_id, runtime) SELECT gen_random_uuid(), 'i-00000001', 'desktop' FROM generate_series(1, 2)")
        .execute(&db.pool)
        .await
        .unwrap();
    let since = db_now(&db).await;
    let request = scaling_service::assign::AssignRequest {
        runtime: "desktop".into(),
        regions: vec![REGION.into()],
        client_commit: "sha-1".into(),
        client_session_id: Some("c-1".into()),
    };
    let first = scaler.assign("alice", &request).await.unwrap().unwrap();
    // Asking again is the same session: no second arrival.
    scaler.assign("alice", &request).await.unwrap().unwrap();
    scaler.assign("bob", &request).await.unwrap().unwrap();
    let (region, runtime, ended): (String, String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT region, runtime, ended_at FROM assigns WHERE session_id = $1")
            .bind(first.session_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (region.as_str(), runtime.as_str(), ended),
        (REGION, "desktop", None)
    );
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(first.session_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let ended: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT ended_at FROM assigns WHERE session_id = $1")
            .bind(first.session_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(ended.is_some(), "the session's end is recorded");

    let until = db_now(&db).await + chrono::Duration::seconds(30);
    let trace = scaling_service::demand::export(&db.pool, REGION, since, until)
        .await
        .unwrap();
    assert_eq!(trace.arrivals.len(), 2, "{trace:?}");
    // Bob is still running: his session lasts until the export's end.
    assert!(trace.arrivals.iter().any(|a| a.duration_s >= 29));
    let back = Trace::from_csv(REGION, &trace.to_csv()).unwrap();
    assert_eq!(back, trace, "the CSV carries the whole trace");
    db.drop_database().await;
}
