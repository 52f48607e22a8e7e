//! The schema on a real PostgreSQL (DATABASE_URL; `scripts/test` starts one).
//! `#[sqlx::test]` gives every test a fresh database.

use std::time::Duration;

use berth_common::db::{self, Hint, HintListener, MIGRATOR};
use berth_common::HostId;
use sqlx::PgPool;

async fn insert_host(pool: &PgPool, id: &str, capacity: i32) {
    sqlx::query(
        "INSERT INTO hosts (id, region, image_id, instance_type, capacity, free_slots, status) \
         VALUES ($1, 'us-east-1', 'ami-1', 't3.large', $2, $2, 'ACTIVE')",
    )
    .bind(id)
    .bind(capacity)
    .execute(pool)
    .await
    .unwrap();
}

async fn free_slots(pool: &PgPool, id: &str) -> i32 {
    sqlx::query_scalar("SELECT free_slots FROM hosts WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn migrations_apply_to_an_empty_database_and_rerun_cleanly(pool: PgPool) {
    MIGRATOR.run(&pool).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in [
        "deploys",
        "events",
        "hosts",
        "images",
        "instance_types",
        "launches",
        "limits",
        "regions",
        "runtimes",
        "sessions",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "missing table {table}: {tables:?}"
        );
    }
    let default_limit: i32 =
        sqlx::query_scalar("SELECT max_sessions FROM limits WHERE user_id = '*'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(default_limit, 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn statuses_outside_the_vocabulary_are_refused(pool: PgPool) {
    insert_host(&pool, "i-1", 2).await;
    let bad = sqlx::query("UPDATE hosts SET status = 'RUNNING' WHERE id = 'i-1'")
        .execute(&pool)
        .await;
    assert!(
        bad.is_err(),
        "a host status outside the enum must be refused"
    );
    let dots = sqlx::query(
        "INSERT INTO hosts (id, region, image_id, instance_type, capacity, free_slots) VALUES ('..', 'r', 'a', 't', 1, 1)",
    )
    .execute(&pool)
    .await;
    assert!(dots.is_err(), "a host id must start with a letter or digit");
    let over = sqlx::query("UPDATE hosts SET free_slots = 3 WHERE id = 'i-1'")
        .execute(&pool)
        .await;
    assert!(over.is_err(), "free_slots above capacity must be refused");
    let two_current = async {
        sqlx::query("INSERT INTO regions (name) VALUES ('us-east-1')")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO images (region, image_id, client_sha, status) VALUES ('us-east-1','a','x','CURRENT')")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO images (region, image_id, client_sha, status) VALUES ('us-east-1','b','x','CURRENT')")
            .execute(&pool)
            .await
    };
    assert!(
        two_current.await.is_err(),
        "a region has at most one CURRENT image"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn free_slots_never_go_below_zero_under_concurrent_takes(pool: PgPool) {
    insert_host(&pool, "i-busy", 5).await;
    let host = HostId::parse("i-busy").unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (pool, host) = (pool.clone(), host.clone());
            tokio::spawn(async move { db::take_free_slot(&pool, &host).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for task in tasks {
        if task.await.unwrap().is_some() {
            taken += 1;
        }
    }
    assert_eq!(taken, 5, "exactly capacity takes succeed");
    assert_eq!(free_slots(&pool, "i-busy").await, 0);
    // Releases stop at capacity too.
    for _ in 0..8 {
        db::release_free_slot(&pool, &host).await.unwrap();
    }
    assert_eq!(free_slots(&pool, "i-busy").await, 5);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn deleting_an_allocated_session_gives_its_slot_back_once(pool: PgPool) {
    insert_host(&pool, "i-2", 2).await;
    let host = HostId::parse("i-2").unwrap();
    db::take_free_slot(&pool, &host).await.unwrap().unwrap();
    let allocated = uuid::Uuid::new_v4();
    let warm = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sessions (id, host_id, runtime, status, user_id, token_sha256, allocated_at) VALUES \
         ($1, 'i-2', 'desktop', 'ALLOCATED', 'u1', repeat('a', 64), now()), ($2, 'i-2', 'desktop', 'WAITING', NULL, NULL, NULL)",
    )
    .bind(allocated)
    .bind(warm)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(free_slots(&pool, "i-2").await, 1);
    for _ in 0..2 {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(allocated)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(
        free_slots(&pool, "i-2").await,
        2,
        "an allocated session's slot comes back exactly once"
    );
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(warm)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        free_slots(&pool, "i-2").await,
        2,
        "a warm session never held a slot"
    );
}

async fn next_notification(listener: &mut HintListener) -> (String, serde_json::Value) {
    loop {
        let hint = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("no notification within 5 s");
        if let Hint::Notification { channel, payload } = hint {
            return (channel, serde_json::from_str(&payload).unwrap());
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn each_trigger_notifies_its_channel(pool: PgPool) {
    let mut listener = HintListener::connect(&pool, &["host_events", "scaling", "config"])
        .await
        .unwrap();
    assert_eq!(
        listener.recv().await,
        Hint::Resync,
        "a new listener starts by resyncing"
    );

    insert_host(&pool, "i-0abc", 2).await;
    let (c1, p1) = next_notification(&mut listener).await;
    let (c2, p2) = next_notification(&mut listener).await;
    let mut got = [(c1, p1), (c2, p2)];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0].0, "host_events");
    assert_eq!(got[0].1["host"], "i-0abc");
    assert_eq!(got[0].1["status"], "ACTIVE");
    assert_eq!(got[1].0, "scaling");
    assert_eq!(got[1].1["region"], "us-east-1");

    let session = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO sessions (id, host_id, runtime) VALUES ($1, 'i-0abc', 'desktop')")
        .bind(session)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET status = 'ALLOCATED', user_id = 'u', token_sha256 = repeat('b', 64), allocated_at = now() WHERE id = $1")
        .bind(session)
        .execute(&pool)
        .await
        .unwrap();
    // Session hints are queued with the write and sent when published.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "a session hint is not sent inside the writing transaction"
    );
    assert_eq!(db::publish_queued_hints(&pool).await.unwrap(), 1);
    let (channel_seen, payload) = next_notification(&mut listener).await;
    assert_eq!(
        channel_seen, "host_events",
        "a WAITING insert is silent, the allocation is not"
    );
    assert_eq!(payload["host"], "i-0abc");
    assert_eq!(payload["kind"], "session");
    assert_eq!(payload["id"], session.to_string());
    assert_eq!(payload["status"], "ALLOCATED");

    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(session)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        db::publish_queued_hints(&pool).await.unwrap(),
        2,
        "the row's end and its freed slot"
    );
    let mut seen = [
        next_notification(&mut listener).await,
        next_notification(&mut listener).await,
    ];
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen[0].1["status"], "DELETED");
    assert_eq!(seen[1].0, "scaling");
    assert_eq!(seen[1].1["kind"], "slot_freed");

    sqlx::query("INSERT INTO regions (name, target_free_slots) VALUES ('eu-west-1', 4)")
        .execute(&pool)
        .await
        .unwrap();
    let (channel_seen, payload) = next_notification(&mut listener).await;
    assert_eq!(channel_seen, "config");
    assert_eq!(
        payload,
        serde_json::json!({"kind": "regions", "key": "eu-west-1", "op": "INSERT"})
    );

    sqlx::query("INSERT INTO runtimes (name, image) VALUES ('python', 'berth-test-app:1')")
        .execute(&pool)
        .await
        .unwrap();
    let (_, payload) = next_notification(&mut listener).await;
    assert_eq!(payload["kind"], "runtimes");
    assert_eq!(payload["key"], "python");
}

/// A WAITING session of `host` allocated to `user` in `conn`'s transaction or
/// as its own statement; each queues one hint.
async fn allocate(conn: &mut sqlx::PgConnection, host: &str, user: &str) -> uuid::Uuid {
    let session = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO sessions (id, host_id, runtime) VALUES ($1, $2, 'desktop')")
        .bind(session)
        .bind(host)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE sessions SET status = 'ALLOCATED', user_id = $2, token_sha256 = repeat('c', 64), allocated_at = now() WHERE id = $1")
        .bind(session)
        .bind(user)
        .execute(&mut *conn)
        .await
        .unwrap();
    session
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn queued_hints_are_published_once_in_order_and_a_late_commit_is_not_dropped(pool: PgPool) {
    insert_host(&pool, "i-0abc", 4).await;
    let mut listener = HintListener::connect(&pool, &["host_events"])
        .await
        .unwrap();
    assert_eq!(listener.recv().await, Hint::Resync);
    db::publish_queued_hints(&pool).await.unwrap();
    while tokio::time::timeout(Duration::from_millis(200), listener.recv())
        .await
        .is_ok()
    {}

    // The first hint is queued (lower id) by a transaction that commits last.
    let mut late = pool.begin().await.unwrap();
    let late_session = allocate(&mut late, "i-0abc", "late").await;
    let mut conn = pool.acquire().await.unwrap();
    let first = allocate(&mut conn, "i-0abc", "first").await;
    let second = allocate(&mut conn, "i-0abc", "second").await;
    assert_eq!(db::publish_queued_hints(&pool).await.unwrap(), 2);
    for expected in [first, second] {
        let (_, payload) = next_notification(&mut listener).await;
        assert_eq!(
            payload["id"],
            expected.to_string(),
            "published in queue order"
        );
    }

    // Another replica publishing: this one sends nothing and loses nothing.
    late.commit().await.unwrap();
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('berth.hint_outbox', 0))")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(db::publish_queued_hints(&pool).await.unwrap(), 0);
    other.rollback().await.unwrap();

    assert_eq!(
        db::publish_queued_hints(&pool).await.unwrap(),
        1,
        "the late commit's hint is published, not dropped"
    );
    let (_, payload) = next_notification(&mut listener).await;
    assert_eq!(payload["id"], late_session.to_string());
    assert_eq!(
        db::publish_queued_hints(&pool).await.unwrap(),
        0,
        "each once"
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM hint_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn listener_reports_resync_after_its_connection_is_killed(pool: PgPool) {
    let mut listener = HintListener::connect(&pool, &["scaling"]).await.unwrap();
    assert_eq!(listener.recv().await, Hint::Resync);
    // Kill the LISTEN backend as a database restart would.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "exactly the listener's backend is terminated");
    let hint = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap();
    assert_eq!(
        hint,
        Hint::Resync,
        "a lost connection must make the owner re-read the rows"
    );
    // And it listens again afterwards.
    sqlx::query("SELECT pg_notify('scaling', '{\"kind\":\"ping\"}')")
        .execute(&pool)
        .await
        .unwrap();
    let (channel, payload) = next_notification(&mut listener).await;
    assert_eq!(
        (channel.as_str(), payload["kind"].as_str()),
        ("scaling", Some("ping"))
    );
}
