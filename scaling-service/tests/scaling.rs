//! Region controllers against the moto EC2 emulator and real PostgreSQL.

mod support;

use std::sync::atomic::AtomicUsize;
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
    let faulty = Arc::new(FaultyProvider {
        inner: aws.clone(),
        lose_every: 2,
        throttle_every: 3,
        calls: AtomicUsize::new(0),
    });
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
        subnets: vec![],
        security_groups: vec![],
        iam_instance_profile: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_heartbeats_stop_is_drained_then_terminated() {
    let db = TestDb::new().await;
    region(&db, 2, 5, 2).await;
    let env = env_name();
    let aws = aws().await;
    let scaler = scaler(&db, &env, aws.clone(), &["--heartbeat-secs", "1"]).await;
    pass(&scaler, REGION).await.unwrap();
    register_hosts(&db).await;
    let (host, _) = host_statuses(&db).await.remove(0);
    sqlx::query("UPDATE hosts SET last_heartbeat_at = now() - interval '1 minute' WHERE id = $1")
        .bind(&host)
        .execute(&db.pool)
        .await
        .unwrap();
    pass(&scaler, REGION).await.unwrap();
    // A silent ACTIVE host is drained; still silent, it is terminated and, once
    // the cloud confirms, its row is gone — in one or two passes.
    pass(&scaler, REGION).await.unwrap();
    let rows = host_statuses(&db).await;
    assert!(
        rows.iter().all(|(id, _)| *id != host),
        "the dead host's row is deleted: {rows:?}"
    );
    let state = aws
        .describe(REGION, &env)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == host)
        .map(|i| i.state);
    assert!(
        state.is_some_and(|s| s.is_gone()),
        "the dead host is terminated: {state:?}"
    );
    // And the buffer is refilled by a replacement.
    let replacements = host_statuses(&db).await.len();
    assert_eq!(replacements, 1, "a replacement host was launched");
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
