//! Harness for the scaler's tests: a fresh database per test, the moto EC2
//! emulator (BERTH_EC2_ENDPOINT) reached through aws-sdk-ec2, and a
//! fault-injecting provider in front of it. Each test uses its own
//! environment name, so its instances are its own in the shared emulator.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use berth_testing::{eventually, TestDb};
use clap::Parser;
use futures_util::future::BoxFuture;
use scaling_service::config::Cli;
use scaling_service::policy::BufferPolicy;
use scaling_service::provider::aws::AwsProvider;
use scaling_service::provider::{
    CloudInstance, LaunchRequest, LaunchedInstance, Provider, ProviderError,
};
use scaling_service::scaler::Scaler;
use uuid::Uuid;

pub const REGION: &str = "us-east-1";
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
pub const AUDIENCE: &str = "berth-tests";
pub const ISSUER: &str = "https://auth.berth.test/";

pub fn moto_endpoint() -> String {
    std::env::var("BERTH_EC2_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5055".to_owned())
}

pub fn env_name() -> String {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// moto accepts any credentials; the SDK needs some, before it is configured.
fn moto_credentials() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", REGION),
    ] {
        if std::env::var(k).is_err() {
            std::env::set_var(k, v);
        }
    }
}

pub fn args(db: &TestDb, env: &str, extra: &[&str]) -> Vec<String> {
    moto_credentials();
    let mut argv: Vec<String> = [
        "scaling-service",
        "--database-url",
        &db.url,
        "--env",
        env,
        // Where launched hosts would reach the host API (required with aws
        // outside development environments; nothing here dials it).
        "--control-url",
        "https://berth-control.test",
        "--port",
        "0",
        "--listen-ip",
        "127.0.0.1",
        "--ec2-endpoint",
        &moto_endpoint(),
        "--auth-hs256-secret",
        SECRET,
        "--auth-audience",
        AUDIENCE,
        "--auth-issuer",
        ISSUER,
        "--operator-token",
        berth_testing::OPERATOR_TOKEN,
        "--tick-secs",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

pub fn config(db: &TestDb, env: &str, extra: &[&str]) -> scaling_service::config::Config {
    Cli::try_parse_from(args(db, env, extra))
        .expect("valid scaling-service arguments")
        .config
}

pub async fn aws() -> Arc<AwsProvider> {
    moto_credentials();
    Arc::new(AwsProvider::new(Some(moto_endpoint())).await)
}

/// A scaler without background tasks: tests drive controller passes themselves.
pub async fn scaler(
    db: &TestDb,
    env: &str,
    provider: Arc<dyn Provider>,
    extra: &[&str],
) -> Arc<Scaler> {
    let config = config(db, env, extra);
    let auth = scaling_service::auth::Authenticator::from_config(&config).unwrap();
    Arc::new(Scaler::new(
        config,
        db.pool.clone(),
        provider,
        Arc::new(BufferPolicy),
        auth,
        Arc::new(
            scaling_service::keys::ControlKeys::load_or_create(&db.pool)
                .await
                .unwrap(),
        ),
    ))
}

/// A region with one instance type of `capacity` slots and a CURRENT image.
pub async fn region(db: &TestDb, target: i32, max_hosts: i32, capacity: i32) {
    sqlx::query("INSERT INTO instance_types (name, vcpus, memory_mib, capacity) VALUES ('t3.large', 2, 8192, $1), ('t3.xlarge', 4, 16384, $1)")
        .bind(capacity)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO regions (name, target_free_slots, max_hosts, instance_types, scale_down_grace_s) \
         VALUES ($1, $2, $3, ARRAY['t3.large', 't3.xlarge'], 0)",
    )
    .bind(REGION)
    .bind(target)
    .bind(max_hosts)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO images (region, image_id, client_sha, status) VALUES ($1, 'ami-11111111', 'sha-1', 'CURRENT')")
        .bind(REGION)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO runtimes (name, image) VALUES ('desktop', 'berth-test-app:1')")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// `hosts` ACTIVE hosts of `capacity` slots on the CURRENT image, all warm.
pub async fn warm_hosts(db: &TestDb, hosts: i32, capacity: i32) {
    region(db, 0, 1000, capacity).await;
    // API tests run real controllers: keep them from scaling these idle
    // hosts down while the test uses them.
    sqlx::query("UPDATE regions SET scale_down_grace_s = 3600")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO hosts (id, region, image_id, client_sha, instance_type, capacity, free_slots, status, public_ip, api_port, cert_sha256, last_heartbeat_at) \
         SELECT 'i-' || lpad(n::text, 8, '0'), $1, 'ami-11111111', 'sha-1', 't3.large', $2, $2, 'ACTIVE', '127.0.0.1', 4678, repeat('a', 64), now() \
         FROM generate_series(1, $3) n",
    )
    .bind(REGION)
    .bind(capacity)
    .bind(hosts)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO sessions (id, host_id, runtime) SELECT gen_random_uuid(), h.id, 'desktop' FROM hosts h, generate_series(1, h.capacity)")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// What host-service does at boot, for every PRE_CONNECTION host: register
/// ACTIVE and warm one session per slot.
pub async fn register_hosts(db: &TestDb) -> usize {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE hosts SET status = 'ACTIVE', registered_at = now(), last_heartbeat_at = now(), public_ip = '127.0.0.1', \
                api_port = 4678, cert_sha256 = repeat('a', 64) WHERE status = 'PRE_CONNECTION' RETURNING id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for id in &ids {
        sqlx::query(
            "INSERT INTO sessions (id, host_id, runtime) SELECT gen_random_uuid(), id, 'desktop' FROM hosts, generate_series(1, capacity) WHERE id = $1",
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    ids.len()
}

pub async fn host_statuses(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("SELECT id, status::text FROM hosts ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Instances of `env` in the emulator that are not terminated.
pub async fn live_cloud(provider: &dyn Provider, env: &str) -> Vec<CloudInstance> {
    provider
        .describe(REGION, env)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| !i.state.is_gone())
        .collect()
}

/// A user JWT signed with the test secret.
pub fn jwt(sub: &str, audience: &str, expires_in_s: i64) -> String {
    let claims = serde_json::json!({
        "sub": sub, "aud": audience, "iss": ISSUER,
        "exp": chrono::Utc::now().timestamp() + expires_in_s,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// An operator's JWT: a user token that also carries the operator claim
/// (the default claim name and value).
pub fn operator_jwt(sub: &str) -> String {
    let claims = serde_json::json!({
        "sub": sub, "aud": AUDIENCE, "iss": ISSUER, "role": ["viewer", "berth-operator"],
        "exp": chrono::Utc::now().timestamp() + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Faults in front of a real provider. Each launch call, by its number:
/// every `lose_every`th really launches and then reports a lost answer (the
/// worst case: instances exist, the caller does not know); every
/// `throttle_every`th is refused without reaching the cloud.
#[derive(Debug)]
pub struct FaultyProvider {
    pub inner: Arc<dyn Provider>,
    pub lose_every: usize,
    pub throttle_every: usize,
    pub calls: AtomicUsize,
    /// Every TerminateInstances call fails while set.
    pub fail_terminate: std::sync::atomic::AtomicBool,
    /// Every launch request, as the scaler made it.
    pub launches: std::sync::Mutex<Vec<LaunchRequest>>,
}

impl FaultyProvider {
    pub fn new(inner: Arc<dyn Provider>, lose_every: usize, throttle_every: usize) -> Self {
        Self {
            inner,
            lose_every,
            throttle_every,
            calls: AtomicUsize::new(0),
            fail_terminate: std::sync::atomic::AtomicBool::new(false),
            launches: Default::default(),
        }
    }
}

impl Provider for FaultyProvider {
    fn launch<'a>(
        &'a self,
        request: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Vec<LaunchedInstance>, ProviderError>> {
        self.launches.lock().unwrap().push(request.clone());
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.throttle_every > 0 && n.is_multiple_of(self.throttle_every) {
                return Err(ProviderError::Throttled(
                    "injected: RequestLimitExceeded".into(),
                ));
            }
            let result = self.inner.launch(request).await;
            if self.lose_every > 0 && n.is_multiple_of(self.lose_every) {
                return Err(ProviderError::Unavailable(
                    "injected: the response was lost".into(),
                ));
            }
            result
        })
    }
    fn terminate<'a>(
        &'a self,
        region: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        if self.fail_terminate.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(ProviderError::Unavailable(
                    "injected: TerminateInstances failed".into(),
                ))
            });
        }
        self.inner.terminate(region, ids)
    }
    fn describe<'a>(
        &'a self,
        region: &'a str,
        env: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudInstance>, ProviderError>> {
        self.inner.describe(region, env)
    }
}
