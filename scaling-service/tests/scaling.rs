//! Region controllers against the moto EC2 emulator and real PostgreSQL.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use scaling_service::controller::pass;
use scaling_service::provider::{tags, LaunchRequest, Provider};
use scaling_service::{deploy, service};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_region_fills_to_target_and_registration_activates_the_hosts() {
    let db = TestDb::new().await;
    region(&db, 4, 10, 2).await;
    let env = env_name();
    let aws = aws().await;
    // The real service, with its own controllers woken by the tick and hints.
    let svc = service::start_with_provider(config(&db, &env, &[]), aws.clone())
        .await
        .unwrap();
    eventually(
        "2 hosts for 4 slots at 2 per host",
        Duration::from_secs(30),
        || async { host_statuses(&db).await.len() == 2 },
    )
    .await;
    assert!(host_statuses(&db)
        .await
        .iter()
        .all(|(_, s)| s == "PRE_CONNECTION"));
    let cloud = aws.describe(REGION, &env).await.unwrap();
    assert_eq!(
        cloud.len(),
        2,
        "exactly the instances the rows name exist in EC2"
    );
    let rows: Vec<String> = host_statuses(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for instance in &cloud {
        assert!(rows.contains(&instance.id));
        assert!(instance.launch_id.is_some(), "tagged with its launch id");
    }
    // Tags, read back raw from the emulator.
    let raw = aws_sdk_ec2_tags(&env).await;
    for needed in [
        tags::ENVIRONMENT,
        tags::REGION,
        tags::LAUNCH_ID,
        tags::MANAGED_BY,
        "Name",
    ] {
        assert!(
            raw.iter().all(|t| t.iter().any(|(k, _)| k == needed)),
            "every instance has tag {needed}: {raw:?}"
        );
    }
    assert!(raw
        .iter()
        .all(|t| t.contains(&(tags::ENVIRONMENT.to_owned(), env.clone()))));
    let launch_state: String = sqlx::query_scalar("SELECT state::text FROM launches")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(launch_state, "LAUNCHED");

    assert_eq!(register_hosts(&db).await, 2);
    assert!(host_statuses(&db).await.iter().all(|(_, s)| s == "ACTIVE"));
    // More passes: the buffer is met, nothing else launches.
    svc.scaler.wake_all();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(live_cloud(aws.as_ref(), &env).await.len(), 2);
    svc.stop().await;
    db.drop_database().await;
}

async fn aws_sdk_ec2_tags(env: &str) -> Vec<Vec<(String, String)>> {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_endpoint())
        .region(aws_config::Region::new(REGION))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .load()
        .await;
    let client = aws_sdk_ec2::Client::new(&conf);
    let out = client
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", tags::ENVIRONMENT))
                .values(env)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            // IMDSv2 required with one hop, as every launch asks.
            let metadata = i.metadata_options().expect("metadata options described");
            assert_eq!(
                metadata.http_tokens(),
                Some(&aws_sdk_ec2::types::HttpTokensState::Required)
            );
            assert_eq!(metadata.http_put_response_hop_limit(), Some(1));
            i.tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_while_run_instances_fails_intermittently() {
    let db = TestDb::new().await;
    // Demand grows by one host per round up to far beyond the cap (5 hosts of
    // 2 slots), so every round calls RunInstances and meets the faults.
    region(&db, 0, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let faulty = Arc::new(FaultyProvider::new(aws.clone(), 2, 3));
    let scaler = scaler(&db, &env, faulty.clone(), &[]).await;
    let mut max_seen = 0;
    for round in 0..14 {
        sqlx::query("UPDATE regions SET target_free_slots = $1")
            .bind(2 * (round + 1))
            .execute(&db.pool)
            .await
            .unwrap();
        pass(&scaler, REGION).await.unwrap();
        let live = live_cloud(aws.as_ref(), &env).await.len();
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM hosts WHERE status NOT IN ('TERMINATING','TERMINATED')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        max_seen = max_seen.max(live);
        assert!(
            live <= 5,
            "round {round}: {live} instances exist, above max_hosts 5"
        );
        assert!(
            rows <= 5,
            "round {round}: {rows} host rows, above max_hosts 5"
        );
        register_hosts(&db).await;
    }
    let calls = faulty.calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(calls >= 3, "faults were exercised: {calls} launch calls");
    assert_eq!(
        max_seen, 5,
        "the region still reaches its cap despite the faults"
    );
    // Lost answers were resolved from the listing: every instance has a row.
    let cloud = live_cloud(aws.as_ref(), &env).await;
    let rows: Vec<String> = host_statuses(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        cloud.iter().all(|i| rows.contains(&i.id)),
        "no instance without a row"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_while_terminate_instances_fails() {
    let db = TestDb::new().await;
    region(&db, 4, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let faulty = Arc::new(FaultyProvider::new(aws.clone(), 0, 0));
    let scaler = scaler(&db, &env, faulty.clone(), &[]).await;
    pass(&scaler, REGION).await.unwrap();
    register_hosts(&db).await;
    // Both hosts are to go, but EC2 refuses every termination.
    faulty.fail_terminate.store(true, Ordering::SeqCst);
    sqlx::query("UPDATE hosts SET status = 'TERMINATING', status_reason = 'test'")
        .execute(&db.pool)
        .await
        .unwrap();
    for round in 0..8 {
        pass(&scaler, REGION).await.unwrap();
        register_hosts(&db).await;
        let live = live_cloud(aws.as_ref(), &env).await.len();
        assert!(
            live <= 5,
            "round {round}: {live} instances run while terminations fail, above max_hosts 5"
        );
    }
    // Once EC2 terminates again, the stuck hosts go and the rows follow.
    faulty.fail_terminate.store(false, Ordering::SeqCst);
    pass(&scaler, REGION).await.unwrap();
    let terminating: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hosts WHERE status = 'TERMINATING'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        terminating, 0,
        "terminated hosts are removed once EC2 answers"
    );
    assert!(live_cloud(aws.as_ref(), &env).await.len() <= 5);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_unknown_to_the_database_is_terminated_by_the_sweep() {
    let db = TestDb::new().await;
    region(&db, 0, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    // Someone (a crashed scaler of this environment) left an instance behind.
    let request = LaunchRequest {
        launch_id: uuid::Uuid::new_v4(),
        region: REGION.into(),
        instance_types: vec!["t3.large".into()],
        image_id: "ami-11111111".into(),
        count: 1,
        tags: vec![
            (tags::ENVIRONMENT.into(), env.clone()),
            (tags::REGION.into(), REGION.into()),
        ],
        user_data: None,
        bootstrap_token: Default::default(),
        control_url: String::new(),
        subnets: vec![],
        security_groups: vec![],
        iam_instance_profile: None,
        purchase: Default::default(),
    };
    let stray = aws.launch(&request).await.unwrap().remove(0);
    // And a row whose instance no longer exists.
    sqlx::query(
        "INSERT INTO hosts (id, region, image_id, instance_type, capacity, free_slots, status, launch_id, launched_at) \
         VALUES ('i-00000000gone', $1, 'ami-11111111', 't3.large', 2, 2, 'ACTIVE', gen_random_uuid(), now() - interval '1 hour')",
    )
    .bind(REGION)
    .execute(&db.pool)
    .await
    .unwrap();
    let scaler = scaler(&db, &env, aws.clone(), &[]).await;
    pass(&scaler, REGION).await.unwrap();
    let cloud = aws.describe(REGION, &env).await.unwrap();
    let state = cloud.iter().find(|i| i.id == stray.id).map(|i| i.state);
    assert!(
        state.is_some_and(|s| s.is_gone()),
        "the orphan is terminated: {state:?}"
    );
    assert!(
        host_statuses(&db).await.is_empty(),
        "the vanished instance's row is deleted"
    );
    db.drop_database().await;
}

/// Every live host but `silent` heartbeats now (what their daemons would do).
async fn beat_except(db: &TestDb, silent: &[&str]) {
    sqlx::query(
        "UPDATE hosts SET last_heartbeat_at = now() \
         WHERE status IN ('ACTIVE', 'UNREACHABLE') AND NOT (id = ANY($1))",
    )
    .bind(silent.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn silence(db: &TestDb, host: &str) {
    sqlx::query("UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1")
        .bind(host)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn host_status(db: &TestDb, host: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status::text FROM hosts WHERE id = $1")
        .bind(host)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

/// A user session on `host`, as an assign leaves it.
async fn user_session(db: &TestDb, host: &str, user: &str) -> uuid::Uuid {
    let id: uuid::Uuid = sqlx::query_scalar(
        "UPDATE sessions SET status = 'RUNNING', user_id = $2, token_sha256 = repeat('c', 64), allocated_at = now() \
         WHERE id = (SELECT id FROM sessions WHERE host_id = $1 AND status = 'WAITING' LIMIT 1) RETURNING id",
    )
    .bind(host)
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE hosts SET free_slots = free_slots - 1 WHERE id = $1")
        .bind(host)
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

async fn ending(db: &TestDb, session: uuid::Uuid) -> Option<(String, String)> {
    sqlx::query_as("SELECT outcome::text, reason FROM session_history WHERE id = $1")
        .bind(session)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_is_unreachable_first_and_terminated_and_replaced_past_its_grace() {
    let db = TestDb::new().await;
    region(&db, 4, 6, 2).await;
    let env = env_name();
    let aws = aws().await;
    let scaler = scaler(
        &db,
        &env,
        aws.clone(),
        &["--heartbeat-secs", "1", "--unreachable-grace-secs", "4"],
    )
    .await;
    pass(&scaler, REGION).await.unwrap();
    register_hosts(&db).await;
    let hosts = host_statuses(&db).await;
    assert_eq!(hosts.len(), 2);
    let (dead, alive) = (hosts[0].0.clone(), hosts[1].0.clone());
    let session = user_session(&db, &dead, "ada").await;
    silence(&db, &dead).await;

    // Once the scaler has watched for a heartbeat grace: UNREACHABLE, not dead.
    eventually(
        "the silent host to be UNREACHABLE",
        Duration::from_secs(10),
        || async {
            beat_except(&db, &[&dead]).await;
            pass(&scaler, REGION).await.unwrap();
            host_status(&db, &dead).await.as_deref() == Some("UNREACHABLE")
        },
    )
    .await;
    assert!(
        ending(&db, session).await.is_none(),
        "its session is left alone"
    );
    let cloud = live_cloud(aws.as_ref(), &env).await;
    assert!(
        cloud.iter().any(|i| i.id == dead),
        "and it is not terminated yet"
    );
    // Its warm slot no longer counts: a replacement is launched.
    let rows = host_statuses(&db).await;
    assert_eq!(rows.len(), 3, "a replacement was launched: {rows:?}");

    // Past the unreachable grace: terminated, removed, the session HOST_LOST.
    eventually(
        "the lost host to be removed",
        Duration::from_secs(20),
        || async {
            beat_except(&db, &[&dead]).await;
            pass(&scaler, REGION).await.unwrap();
            host_status(&db, &dead).await.is_none()
        },
    )
    .await;
    let (outcome, reason) = ending(&db, session).await.expect("the ending is recorded");
    assert_eq!(outcome, "HOST_LOST");
    assert!(
        reason.contains(&dead) && reason.contains("heartbeat"),
        "{reason}"
    );
    let state = aws
        .describe(REGION, &env)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == dead)
        .map(|i| i.state);
    assert!(state.is_some_and(|s| s.is_gone()), "terminated: {state:?}");
    assert_eq!(host_status(&db, &alive).await.as_deref(), Some("ACTIVE"));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_that_beats_again_is_active_with_its_sessions() {
    let db = TestDb::new().await;
    region(&db, 2, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let scaler = scaler(&db, &env, aws.clone(), &["--heartbeat-secs", "1"]).await;
    pass(&scaler, REGION).await.unwrap();
    register_hosts(&db).await;
    let host = host_statuses(&db).await.remove(0).0;
    let session = user_session(&db, &host, "ada").await;
    silence(&db, &host).await;
    eventually("UNREACHABLE", Duration::from_secs(10), || async {
        pass(&scaler, REGION).await.unwrap();
        host_status(&db, &host).await.as_deref() == Some("UNREACHABLE")
    })
    .await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT status_reason FROM hosts WHERE id = $1")
            .bind(&host)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(reason.is_some_and(|r| r.starts_with("no heartbeat since")));
    beat_except(&db, &[]).await;
    assert_eq!(
        host_status(&db, &host).await.as_deref(),
        Some("ACTIVE"),
        "a heartbeat revives it"
    );
    pass(&scaler, REGION).await.unwrap();
    assert_eq!(host_status(&db, &host).await.as_deref(), Some("ACTIVE"));
    let status: String = sqlx::query_scalar("SELECT status::text FROM sessions WHERE id = $1")
        .bind(session)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "RUNNING");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_terminated_in_ec2_is_removed_in_one_pass_and_its_sessions_end_host_lost() {
    let db = TestDb::new().await;
    region(&db, 2, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let scaler = scaler(&db, &env, aws.clone(), &[]).await;
    pass(&scaler, REGION).await.unwrap();
    register_hosts(&db).await;
    let host = host_statuses(&db).await.remove(0).0;
    let session = user_session(&db, &host, "ada").await;
    // Someone terminates the instance behind Berth's back; it was heartbeating.
    aws.terminate(REGION, std::slice::from_ref(&host))
        .await
        .unwrap();
    // The row is younger than the listing grace, so age it as a real fleet's.
    sqlx::query("UPDATE hosts SET launched_at = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    pass(&scaler, REGION).await.unwrap();
    assert!(
        host_status(&db, &host).await.is_none(),
        "removed in one pass"
    );
    let (outcome, reason) = ending(&db, session).await.expect("the ending is recorded");
    assert_eq!(outcome, "HOST_LOST");
    assert!(reason.contains(&host), "{reason}");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_region_silent_at_once_terminates_none_and_one_alone_is_terminated() {
    let db = TestDb::new().await;
    // max_hosts = the four hosts: a replacement launched while two are silent
    // would make the returning one surplus, and a surplus host is drained.
    region(&db, 8, 4, 2).await;
    let env = env_name();
    let aws = aws().await;
    let scaler = scaler(
        &db,
        &env,
        aws.clone(),
        &["--heartbeat-secs", "1", "--unreachable-grace-secs", "3"],
    )
    .await;
    pass(&scaler, REGION).await.unwrap();
    register_hosts(&db).await;
    let hosts: Vec<String> = host_statuses(&db)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(hosts.len(), 4);
    silence(&db, &hosts[0]).await;
    silence(&db, &hosts[1]).await;
    let silent = [hosts[0].as_str(), hosts[1].as_str()];
    // Well past both graces: they are UNREACHABLE, the brake holds, none goes.
    eventually(
        "the mass silence to be suspected",
        Duration::from_secs(10),
        || async {
            beat_except(&db, &silent).await;
            pass(&scaler, REGION).await.unwrap();
            scaler
                .silence(REGION)
                .is_some_and(|s| s.mass_silence_suspected)
                && host_status(&db, silent[0]).await.as_deref() == Some("UNREACHABLE")
        },
    )
    .await;
    let held_since = std::time::Instant::now();
    while held_since.elapsed() < Duration::from_secs(5) {
        beat_except(&db, &silent).await;
        pass(&scaler, REGION).await.unwrap();
        for host in silent {
            assert_eq!(
                host_status(&db, host).await.as_deref(),
                Some("UNREACHABLE"),
                "no host is terminated for silence while half the region is silent"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let silence = scaler.silence(REGION).unwrap();
    let exposed = scaler.metrics.render();
    assert!(
        exposed.contains(&format!(
            "berth_scaler_mass_silence_suspected{{region=\"{REGION}\"}} 1"
        )),
        "the suspicion is a metric: {exposed}"
    );
    // (A slow pass on a loaded machine may see a healthy host late as well.)
    assert!(
        silence.silent_hosts >= 2 && silence.live_hosts == 4,
        "{silence:?}"
    );

    // One comes back; the other, alone now, is terminated past its grace.
    beat_except(&db, &[silent[1]]).await;
    eventually(
        "the lone silent host to be removed",
        Duration::from_secs(20),
        || async {
            beat_except(&db, &[silent[1]]).await;
            pass(&scaler, REGION).await.unwrap();
            host_status(&db, silent[1]).await.is_none()
        },
    )
    .await;
    assert_eq!(host_status(&db, silent[0]).await.as_deref(), Some("ACTIVE"));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_missed_while_the_scaler_was_away_are_not_held_against_hosts() {
    let db = TestDb::new().await;
    region(&db, 4, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let first = scaler(&db, &env, aws.clone(), &["--heartbeat-secs", "2"]).await;
    pass(&first, REGION).await.unwrap();
    register_hosts(&db).await;
    // The database (or this scaler) was away for an hour: every heartbeat is old.
    sqlx::query("UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    let restarted = scaler(&db, &env, aws.clone(), &["--heartbeat-secs", "2"]).await;
    pass(&restarted, REGION).await.unwrap();
    let statuses = host_statuses(&db).await;
    assert!(
        statuses.iter().all(|(_, s)| s == "ACTIVE"),
        "a fresh scaler gives every host a fresh grace: {statuses:?}"
    );
    // The same after the scaler's own database connection dropped.
    first.evidence.disconnected();
    first.evidence.connected();
    pass(&first, REGION).await.unwrap();
    let statuses = host_statuses(&db).await;
    assert!(statuses.iter().all(|(_, s)| s == "ACTIVE"), "{statuses:?}");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaler_restart_mid_deploy_finishes_it_without_a_second_buffer() {
    let db = TestDb::new().await;
    region(&db, 4, 10, 2).await;
    let env = env_name();
    let aws = aws().await;
    let first = scaler(&db, &env, aws.clone(), &[]).await;
    pass(&first, REGION).await.unwrap();
    register_hosts(&db).await;
    deploy::start(
        &db.pool,
        REGION,
        "ami-22222222",
        "sha-2",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    pass(&first, REGION).await.unwrap();
    let candidates = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM hosts WHERE image_id = 'ami-22222222'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(
        candidates().await,
        2,
        "a protected buffer of 2 candidate hosts"
    );
    drop(first);

    // A new process: the same deploy continues, no second buffer.
    let second = scaler(&db, &env, aws.clone(), &[]).await;
    pass(&second, REGION).await.unwrap();
    pass(&second, REGION).await.unwrap();
    assert_eq!(candidates().await, 2, "no second buffer after the restart");
    register_hosts(&db).await;
    pass(&second, REGION).await.unwrap();
    let state: String = sqlx::query_scalar("SELECT state::text FROM deploys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(state, "READY");
    deploy::release(&db.pool, REGION).await.unwrap();
    pass(&second, REGION).await.unwrap();
    let (state, current): (String, String) = sqlx::query_as(
        "SELECT d.state::text, i.image_id FROM deploys d JOIN images i ON i.region = d.region AND i.status = 'CURRENT'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), current.as_str()),
        ("SWAPPED", "ami-22222222")
    );
    // Old, empty hosts drain once the new image is current.
    pass(&second, REGION).await.unwrap();
    let old: Vec<String> =
        sqlx::query_scalar("SELECT status::text FROM hosts WHERE image_id = 'ami-11111111'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        old.iter().all(|s| s != "ACTIVE"),
        "old hosts drain: {old:?}"
    );
    assert_eq!(
        live_cloud(aws.as_ref(), &env).await.len() as i64,
        4,
        "2 old (draining) + 2 new; never a third set"
    );
    db.drop_database().await;
}
