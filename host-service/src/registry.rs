//! Who this host is and its row in `hosts`: identity (IMDSv2 or local flags),
//! registration, heartbeats, status moves and death notices.

use std::net::IpAddr;

use berth_common::db::DbError;
use berth_common::imds::{ImdsClient, ImdsError};
use berth_common::{HostId, HostStatus};
use sqlx::PgPool;

use crate::config::Config;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub host_id: HostId,
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub public_ip: Option<IpAddr>,
    pub private_ip: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading instance metadata: {0}")]
    Metadata(#[from] ImdsError),
    #[error("invalid local host id: {0}")]
    LocalId(#[from] berth_common::ids::InvalidHostId),
    #[error("host {0} has no row in `hosts`; the scaler inserts it (PRE_CONNECTION) before the instance boots — was it launched by another environment?")]
    NotLaunched(HostId),
    #[error("host {host}'s row says {field} = {expected:?} but this instance has {actual:?}; refusing to register a mismatched host")]
    Mismatch {
        host: HostId,
        field: &'static str,
        expected: String,
        actual: String,
    },
    #[error("host {0} has no row in `hosts`, so there is nothing to drain; check the host id (the EC2 instance id, or --local-host-id / BERTH_LOCAL_HOST_ID with --local) and that DATABASE_URL is this host's environment's database")]
    Unknown(HostId),
    #[error("host {host} is {status}; it can no longer register")]
    Ended { host: HostId, status: HostStatus },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// This host's identity: from IMDSv2, or from the `--local-*` flags.
pub async fn identity(config: &Config) -> Result<Identity, RegistryError> {
    if config.local {
        let ip = config.public_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        return Ok(Identity {
            host_id: HostId::parse(config.local_host_id.clone())?,
            region: config.local_region.clone(),
            image_id: config.local_image_id.clone(),
            instance_type: config.local_instance_type.clone(),
            public_ip: Some(ip),
            private_ip: Some(ip),
        });
    }
    let imds = ImdsClient::new(&config.imds_endpoint)?;
    let id = imds.identity().await?;
    Ok(Identity {
        host_id: id.instance_id,
        region: id.region,
        image_id: id.ami_id,
        instance_type: id.instance_type,
        public_ip: config.public_ip.or(id.public_ipv4).or(id.local_ipv4),
        private_ip: id.local_ipv4,
    })
}

/// What registration found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The host is ACTIVE with this many slots.
    Active { capacity: i32 },
    /// The host was already told to drain: drain at once and exit.
    Draining { capacity: i32 },
}

/// The API endpoint and certificate this host publishes.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    pub api_port: u16,
    pub cert_sha256: &'a str,
    pub version: &'a str,
}

#[derive(sqlx::FromRow)]
struct HostRow {
    region: String,
    image_id: String,
    instance_type: String,
    status: HostStatus,
    capacity: i32,
}

/// How long a host that boots before the scaler has written its row keeps
/// asking (the scaler records instances right after RunInstances answers).
const ROW_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// [`register_once`], retried while the row does not exist yet.
pub async fn register(
    db: &PgPool,
    me: &Identity,
    endpoint: &Endpoint<'_>,
    local_capacity: Option<i32>,
) -> Result<Registration, RegistryError> {
    let deadline = tokio::time::Instant::now() + ROW_WAIT;
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        match register_once(db, me, endpoint, local_capacity).await {
            Err(RegistryError::NotLaunched(_))
                if tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::warn!(host = %me.host_id, "no host row yet; waiting for the scaler to record the launch");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Registers: the row must exist (inserted by the scaler) with a matching
/// region, image and type — in local mode it is created. The row is locked
/// while checked and updated, so a concurrent drain is not lost.
async fn register_once(
    db: &PgPool,
    me: &Identity,
    endpoint: &Endpoint<'_>,
    local_capacity: Option<i32>,
) -> Result<Registration, RegistryError> {
    let mut tx = db
        .begin()
        .await
        .map_err(DbError::query("starting registration"))?;
    if let Some(capacity) = local_capacity {
        sqlx::query(
            "INSERT INTO hosts (id, region, image_id, instance_type, capacity, free_slots, status) \
             VALUES ($1, $2, $3, $4, $5, $5, 'PRE_CONNECTION') ON CONFLICT (id) DO NOTHING",
        )
        .bind(&me.host_id)
        .bind(&me.region)
        .bind(&me.image_id)
        .bind(&me.instance_type)
        .bind(capacity)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("creating the local host row"))?;
    }
    let row: Option<HostRow> = sqlx::query_as(
        "SELECT region, image_id, instance_type, status, capacity FROM hosts WHERE id = $1 FOR UPDATE",
    )
    .bind(&me.host_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(DbError::query("reading the host row"))?;
    let row = row.ok_or_else(|| RegistryError::NotLaunched(me.host_id.clone()))?;
    for (field, expected, actual) in [
        ("region", &row.region, &me.region),
        ("image_id", &row.image_id, &me.image_id),
        ("instance_type", &row.instance_type, &me.instance_type),
    ] {
        if expected != actual {
            return Err(RegistryError::Mismatch {
                host: me.host_id.clone(),
                field,
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
    }
    match row.status {
        HostStatus::Draining => {
            return Ok(Registration::Draining {
                capacity: row.capacity,
            })
        }
        HostStatus::Terminating | HostStatus::Terminated => {
            return Err(RegistryError::Ended {
                host: me.host_id.clone(),
                status: row.status,
            })
        }
        // ACTIVE again is a restart of the daemon on a live host.
        HostStatus::Launching
        | HostStatus::PreConnection
        | HostStatus::Active
        | HostStatus::Unreachable => {}
    }
    sqlx::query(
        "UPDATE hosts SET status = 'ACTIVE', status_reason = NULL, public_ip = $2::inet, private_ip = $3::inet, api_port = $4, \
                cert_sha256 = $5, host_version = $6, registered_at = coalesce(registered_at, now()), \
                last_heartbeat_at = now() \
         WHERE id = $1",
    )
    .bind(&me.host_id)
    .bind(me.public_ip.map(|ip| ip.to_string()))
    .bind(me.private_ip.map(|ip| ip.to_string()))
    .bind(i32::from(endpoint.api_port))
    .bind(endpoint.cert_sha256)
    .bind(endpoint.version)
    .execute(&mut *tx)
    .await
    .map_err(DbError::query("activating the host row"))?;
    tx.commit()
        .await
        .map_err(DbError::query("committing registration"))?;
    Ok(Registration::Active {
        capacity: row.capacity,
    })
}

/// One heartbeat; returns the row's status (a missed DRAINING hint is caught
/// here), or `None` when the row is gone.
pub async fn heartbeat(
    db: &PgPool,
    host: &HostId,
    load: Option<f32>,
    sessions: i32,
) -> Result<Option<HostStatus>, DbError> {
    sqlx::query_scalar(
        "UPDATE hosts SET last_heartbeat_at = now(), load_average = $2, session_count = $3 WHERE id = $1 RETURNING status",
    )
    .bind(host)
    .bind(load)
    .bind(sessions)
    .fetch_optional(db)
    .await
    .map_err(DbError::query("sending a heartbeat"))
}

pub async fn status(db: &PgPool, host: &HostId) -> Result<Option<(HostStatus, i32)>, DbError> {
    sqlx::query_as("SELECT status, free_slots FROM hosts WHERE id = $1")
        .bind(host)
        .fetch_optional(db)
        .await
        .map_err(DbError::query("reading the host status"))
}

/// Marks the host DRAINING (`host-service drain`, or the daemon itself).
pub async fn request_drain(db: &PgPool, host: &HostId, reason: &str) -> Result<bool, DbError> {
    let moved = sqlx::query(
        "UPDATE hosts SET status = 'DRAINING', status_reason = $2, draining_since = coalesce(draining_since, now()) \
         WHERE id = $1 AND status IN ('LAUNCHING', 'PRE_CONNECTION', 'ACTIVE')",
    )
    .bind(host)
    .bind(reason)
    .execute(db)
    .await
    .map_err(DbError::query("marking the host DRAINING"))?;
    Ok(moved.rows_affected() == 1)
}

pub async fn mark_terminating(db: &PgPool, host: &HostId) -> Result<(), DbError> {
    sqlx::query("UPDATE hosts SET status = 'TERMINATING' WHERE id = $1 AND status = 'DRAINING'")
        .bind(host)
        .execute(db)
        .await
        .map_err(DbError::query("marking the host TERMINATING"))?;
    Ok(())
}

/// Records why the daemon died, so the scaler and operators see it without the logs.
pub async fn death_notice(db: &PgPool, host: &HostId, reason: &str) {
    let result = sqlx::query("UPDATE hosts SET status_reason = $2 WHERE id = $1")
        .bind(host)
        .bind(format!("host-service died: {reason}"))
        .execute(db)
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "could not record the death notice in the host row");
    }
}

/// The 1-minute load average, for heartbeats.
pub fn load_average() -> Option<f32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
