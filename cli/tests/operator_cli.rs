//! The `berth` command line against a real control plane and PostgreSQL:
//! each command changes exactly what it says, prints a table (or the API's
//! JSON with --json), and its actions land in the audit trail under the
//! credential's subject; a user's JWT is refused with the API's code.

use std::process::Output;

use berth_testing::TestDb;
use clap::Parser;
use serde_json::Value;

const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
const REGION: &str = "us-east-1";

fn jwt(sub: &str, role: Option<&str>) -> String {
    let mut claims = serde_json::json!({"sub": sub, "exp": chrono::Utc::now().timestamp() + 600});
    if let Some(role) = role {
        claims["role"] = role.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The control plane (local provider: nothing is launched, target 0) and the
/// directory its provider made, removed by the caller.
async fn control_plane(db: &TestDb) -> (scaling_service::service::Service, std::path::PathBuf) {
    let env = format!("t{}", &uuid_like());
    let dir = std::env::temp_dir().join(format!("berth-cli-{env}"));
    let cli = scaling_service::config::Cli::try_parse_from([
        "scaling-service",
        "--database-url",
        &db.url,
        "--env",
        &format!("dev-{env}"),
        "--provider",
        "local",
        "--local-dir",
        dir.to_str().unwrap(),
        "--port",
        "0",
        "--listen-ip",
        "127.0.0.1",
        "--auth-hs256-secret",
        SECRET,
        "--operator-token",
        berth_testing::OPERATOR_TOKEN,
        "--tick-secs",
        "3600",
    ])
    .unwrap();
    (
        scaling_service::service::start(cli.config).await.unwrap(),
        dir,
    )
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::process::id() as u64 * 1_000_003 + chrono::Utc::now().timestamp_subsec_nanos() as u64
    )
}

/// Two ACTIVE hosts of two warm slots, one with a user's session.
async fn fleet(db: &TestDb) {
    for statement in [
        "INSERT INTO instance_types (name, vcpus, memory_mib, capacity) VALUES ('t3.large', 2, 8192, 2)",
        "INSERT INTO regions (name, target_free_slots, max_hosts, instance_types, scale_down_grace_s) VALUES ('us-east-1', 0, 4, ARRAY['t3.large'], 3600)",
        "INSERT INTO images (region, image_id, client_sha, status) VALUES ('us-east-1', 'ami-11111111', 'sha-1', 'CURRENT')",
        "INSERT INTO runtimes (name, image) VALUES ('desktop', 'berth-test-app:1')",
        "INSERT INTO hosts (id, region, image_id, client_sha, instance_type, capacity, free_slots, status, public_ip, api_port, cert_sha256, last_heartbeat_at) \
         SELECT 'i-' || lpad(n::text, 8, '0'), 'us-east-1', 'ami-11111111', 'sha-1', 't3.large', 2, 2, 'ACTIVE', '127.0.0.1', 4678, repeat('a', 64), now() FROM generate_series(1, 2) n",
        "INSERT INTO sessions (id, host_id, runtime) SELECT gen_random_uuid(), h.id, 'desktop' FROM hosts h, generate_series(1, h.capacity)",
        "WITH one AS (SELECT id FROM sessions WHERE host_id = 'i-00000001' LIMIT 1) \
         UPDATE sessions s SET status = 'RUNNING', user_id = 'alice', token_sha256 = repeat('b', 64), allocated_at = now() FROM one WHERE s.id = one.id",
        "UPDATE hosts SET free_slots = 1 WHERE id = 'i-00000001'",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
}

async fn berth(url: &str, token: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .args(args)
        .env("BERTH_URL", url)
        .env("BERTH_OPERATOR_TOKEN", token);
    tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
        .await
        .expect("berth answered within 30 s")
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "berth failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn one(db: &TestDb, sql: &str) -> String {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_does_what_it_says_and_is_on_record() {
    let db = TestDb::new().await;
    fleet(&db).await;
    let (svc, dir) = control_plane(&db).await;
    let url = format!("http://{}", svc.addr);
    let ops = jwt("ops-carol", Some("berth-operator"));

    // Views: tables with their rows; --json is the API's JSON.
    let status = stdout(&berth(&url, &ops, &["status"]).await);
    assert!(status.starts_with("REGION"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("us-east-1") && l.contains("ACTIVE:2")),
        "{status}"
    );
    let hosts = stdout(&berth(&url, &ops, &["hosts", "--status", "active"]).await);
    assert_eq!(hosts.lines().count(), 3, "{hosts}");
    let sessions: Value = serde_json::from_str(&stdout(
        &berth(&url, &ops, &["--json", "sessions", "--user", "alice"]).await,
    ))
    .unwrap();
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    let session = list[0]["id"].as_str().unwrap().to_owned();

    // Drain: that host, once.
    let out = stdout(&berth(&url, &ops, &["drain", "i-00000002"]).await);
    assert_eq!(out, "host i-00000002 is DRAINING\n");
    let out = stdout(&berth(&url, &ops, &["drain", "i-00000002"]).await);
    assert!(out.contains("already so"), "{out}");
    assert_eq!(
        one(
            &db,
            "SELECT string_agg(id || '=' || status::text, ',' ORDER BY id) FROM hosts"
        )
        .await,
        "i-00000001=ACTIVE,i-00000002=DRAINING"
    );

    // End: that session.
    let out = stdout(&berth(&url, &ops, &["end", &session]).await);
    assert_eq!(out, format!("session {session} is DYING\n"));
    assert_eq!(
        one(
            &db,
            "SELECT string_agg(status::text, ',') FROM sessions WHERE user_id IS NOT NULL"
        )
        .await,
        "DYING"
    );

    // Region: target and cap, disable.
    let out = stdout(
        &berth(
            &url,
            &ops,
            &[
                "region",
                REGION,
                "--disable",
                "--target",
                "0",
                "--max-hosts",
                "3",
            ],
        )
        .await,
    );
    assert_eq!(
        out,
        "region us-east-1: disabled, target 0 free slots, at most 3 hosts\n"
    );
    assert_eq!(
        one(
            &db,
            "SELECT enabled || ',' || target_free_slots || ',' || max_hosts FROM regions"
        )
        .await,
        "false,0,3"
    );

    // Deploy: start, release, then a new one aborted.
    stdout(
        &berth(
            &url,
            &ops,
            &[
                "deploy",
                "start",
                REGION,
                "ami-22222222",
                "--client-sha",
                "sha-2",
            ],
        )
        .await,
    );
    // The region's controller may already have filled the new image's
    // buffer (a pass can run between the command and this read).
    let state = one(&db, "SELECT state::text FROM deploys").await;
    assert!(
        state == "BUFFERING" || state == "READY",
        "a started deploy is BUFFERING or READY, not {state}"
    );
    stdout(&berth(&url, &ops, &["deploy", "release", REGION]).await);
    assert_eq!(
        one(&db, "SELECT (released_at IS NOT NULL)::text FROM deploys").await,
        "true"
    );
    stdout(&berth(&url, &ops, &["deploy", "abort", REGION]).await);
    assert_eq!(
        one(&db, "SELECT state::text || ':' || error FROM deploys").await,
        "FAILED:aborted by operator ops-carol"
    );

    // A refusal: the API's status and code on stderr, exit 1.
    let refused = berth(&url, &ops, &["deploy", "release", REGION]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409 NO_DEPLOY"));

    // The trail, through the CLI: each action with subject, target and outcome.
    let mut records = vec![];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while records.len() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "audit records missing: {records:?}"
        );
        let page: Value = serde_json::from_str(&stdout(
            &berth(&url, &ops, &["--json", "audit", "--actor", "ops-carol"]).await,
        ))
        .unwrap();
        records = page["records"].as_array().unwrap().clone();
    }
    let summary: Vec<String> = records
        .iter()
        .rev()
        .map(|r| {
            format!(
                "{} {} {}",
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
                r["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "host.drain i-00000002 ok".to_owned(),
            "host.drain i-00000002 ok".to_owned(),
            format!("session.end {session} ok"),
            "region.update us-east-1 ok".to_owned(),
            "deploy.start us-east-1 ok".to_owned(),
            "deploy.release us-east-1 ok".to_owned(),
            "deploy.abort us-east-1 ok".to_owned(),
            "deploy.release us-east-1 refused".to_owned(),
        ]
    );
    let table = stdout(
        &berth(
            &url,
            &ops,
            &["audit", "--action", "host.drain", "--limit", "1"],
        )
        .await,
    );
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.contains("operator:ops-carol") && table.contains("host.drain"),
        "{table}"
    );

    // A user's JWT: refused with the API's code, nothing changed.
    let user = berth(&url, &jwt("alice", None), &["drain", "i-00000001"]).await;
    assert_eq!(user.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&user.stderr).contains("403 OPERATOR_ONLY"));
    assert_eq!(
        one(
            &db,
            "SELECT status::text FROM hosts WHERE id = 'i-00000001'"
        )
        .await,
        "ACTIVE"
    );
    // Bad usage is exit 64; the operator token works as well as a JWT.
    assert_eq!(
        berth(&url, &ops, &["region", REGION, "--enable", "--disable"])
            .await
            .status
            .code(),
        Some(64)
    );
    stdout(&berth(&url, berth_testing::OPERATOR_TOKEN, &["status"]).await);
    svc.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}
