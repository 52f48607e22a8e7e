//! Launching hosts with a trace: the `launches` row is written before the
//! cloud is called, so a crash at any point leaves something the next pass can
//! finish — and in-flight launches count against `max_hosts` until resolved.

use berth_common::auth::new_session_token;
use berth_common::db::DbError;
use uuid::Uuid;

use crate::provider::{
    tags, BootstrapToken, CloudInstance, LaunchRequest, LaunchedInstance, ProviderError,
};
use crate::scaler::Scaler;
use crate::state::{self, RegionRow, StateError};

pub async fn launch(
    scaler: &Scaler,
    region: &RegionRow,
    image_id: &str,
    client_sha: &str,
    count: i32,
) -> Result<(), StateError> {
    let launch_id = Uuid::new_v4();
    let preferred = region.instance_types.first().cloned().unwrap_or_default();
    scaler.begin_launch(launch_id);
    let result = launch_tracked(
        scaler, region, launch_id, &preferred, image_id, client_sha, count,
    )
    .await;
    scaler.end_launch(launch_id);
    result
}

async fn launch_tracked(
    scaler: &Scaler,
    region: &RegionRow,
    launch_id: Uuid,
    preferred: &str,
    image_id: &str,
    client_sha: &str,
    count: i32,
) -> Result<(), StateError> {
    sqlx::query("INSERT INTO launches (id, region, instance_type, image_id, count) VALUES ($1, $2, $3, $4, $5)")
        .bind(launch_id)
        .bind(&region.name)
        .bind(preferred)
        .bind(image_id)
        .bind(count)
        .execute(&scaler.db)
        .await
        .map_err(DbError::query("recording a launch"))?;
    crate::faults::point("launch.after_row");
    call_provider(scaler, region, launch_id, image_id, client_sha, count).await
}

/// Calls the cloud for a recorded launch and records the outcome. Running it
/// again for the same launch is safe: the client tokens derive from the launch
/// id, so EC2 returns the instances a first call made instead of new ones.
async fn call_provider(
    scaler: &Scaler,
    region: &RegionRow,
    launch_id: Uuid,
    image_id: &str,
    client_sha: &str,
    count: i32,
) -> Result<(), StateError> {
    let env = &scaler.config.common.environment;
    // Armed before the cloud is called: an instance may boot and register
    // before RunInstances has even answered.
    let bootstrap = new_session_token();
    crate::host_api::identity::arm_launch(
        &scaler.db,
        launch_id,
        &bootstrap.sha256_hex,
        scaler.config.registration_timeout_secs,
    )
    .await
    .map_err(DbError::query("arming a launch's bootstrap token"))?;
    let request = LaunchRequest {
        launch_id,
        region: region.name.clone(),
        instance_types: region.instance_types.clone(),
        image_id: image_id.to_owned(),
        count,
        tags: vec![
            (tags::ENVIRONMENT.to_owned(), env.clone()),
            (tags::REGION.to_owned(), region.name.clone()),
            (tags::LAUNCH_ID.to_owned(), launch_id.to_string()),
            (
                tags::MANAGED_BY.to_owned(),
                tags::MANAGED_BY_VALUE.to_owned(),
            ),
            ("Name".to_owned(), format!("berth-{env}-host")),
        ],
        user_data: user_data(scaler, &region.name, &bootstrap.token),
        bootstrap_token: BootstrapToken(bootstrap.token.clone()),
        control_url: scaler.control_url().to_owned(),
        subnets: region.subnets(),
        security_groups: region.security_groups(),
        iam_instance_profile: region.iam_instance_profile.clone(),
        purchase: region.purchase,
    };
    tracing::info!(region = region.name, %launch_id, count, image_id, purchase = region.purchase.as_str(), "launching hosts");
    match scaler.provider.launch(&request).await {
        Ok(instances) => {
            crate::faults::point("launch.after_run");
            record_instances(
                scaler,
                &region.name,
                launch_id,
                image_id,
                client_sha,
                &instances,
            )
            .await?;
            crate::faults::point("launch.after_record");
            scaler.metrics.launches.inc_by(instances.len() as u64);
            Ok(())
        }
        // The request may have launched instances whose answer was lost: the
        // launch stays PENDING (counting against max_hosts) until a listing
        // by its tag resolves it.
        Err(error @ ProviderError::Unavailable(_)) => {
            scaler.metrics.launch_failures.inc();
            tracing::warn!(region = region.name, %launch_id, %error, "launch outcome unknown; resolving it from the instance listing");
            Ok(())
        }
        Err(error) => {
            scaler.metrics.launch_failures.inc();
            tracing::error!(region = region.name, %launch_id, %error, "launch failed");
            sqlx::query("UPDATE launches SET state = 'FAILED', error = $2 WHERE id = $1 AND state = 'PENDING'")
                .bind(launch_id)
                .bind(error.to_string())
                .execute(&scaler.db)
                .await
                .map_err(DbError::query("recording a failed launch"))?;
            Ok(())
        }
    }
}

/// The user data file with `{region}`, `{env}`, `{control_url}` and
/// `{bootstrap_token}` filled in.
fn user_data(scaler: &Scaler, region: &str, bootstrap_token: &str) -> Option<String> {
    let path = scaler.config.user_data_file.as_ref()?;
    match std::fs::read_to_string(path) {
        Ok(text) => Some(
            text.replace("{region}", region)
                .replace("{env}", &scaler.config.common.environment)
                .replace("{control_url}", scaler.control_url())
                .replace("{bootstrap_token}", bootstrap_token),
        ),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot read BERTH_USER_DATA_FILE; launching without user data");
            None
        }
    }
}

/// Host rows (PRE_CONNECTION) and the launch marked LAUNCHED, in one transaction.
async fn record_instances(
    scaler: &Scaler,
    region: &str,
    launch_id: Uuid,
    image_id: &str,
    client_sha: &str,
    instances: &[LaunchedInstance],
) -> Result<(), StateError> {
    let mut tx = scaler
        .db
        .begin()
        .await
        .map_err(DbError::query("recording launched instances"))?;
    for instance in instances {
        let capacity = state::capacity_of(&scaler.db, &instance.instance_type).await?;
        sqlx::query(
            "INSERT INTO hosts (id, region, image_id, client_sha, instance_type, capacity, free_slots, status, launch_id, \
                                public_ip, private_ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, 'PRE_CONNECTION', $7, $8::inet, $9::inet) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&instance.id)
        .bind(region)
        .bind(image_id)
        .bind(client_sha)
        .bind(&instance.instance_type)
        .bind(capacity)
        .bind(launch_id)
        .bind(instance.public_ip.as_deref())
        .bind(instance.private_ip.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("inserting a launched host"))?;
    }
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    sqlx::query("UPDATE launches SET state = 'LAUNCHED', instance_ids = $2 WHERE id = $1")
        .bind(launch_id)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(DbError::query("marking a launch LAUNCHED"))?;
    tx.commit()
        .await
        .map_err(DbError::query("committing launched instances"))?;
    Ok(())
}

/// Finishes PENDING launches left by a crash: their instances (found by the
/// launch-id tag) become host rows; a launch with none is issued again with
/// its original client tokens, which cannot double it on EC2.
pub async fn resolve_pending(
    scaler: &Scaler,
    region: &RegionRow,
    cloud: &[CloudInstance],
) -> Result<(), StateError> {
    let pending: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT id, image_id, count FROM launches WHERE region = $1 AND state = 'PENDING'",
    )
    .bind(&region.name)
    .fetch_all(&scaler.db)
    .await
    .map_err(DbError::query("reading pending launches"))?;
    for (launch_id, image_id, count) in pending {
        if scaler.is_launching(launch_id) {
            continue;
        }
        let client_sha: String =
            sqlx::query_scalar("SELECT client_sha FROM images WHERE region = $1 AND image_id = $2")
                .bind(&region.name)
                .bind(&image_id)
                .fetch_optional(&scaler.db)
                .await
                .map_err(DbError::query("reading an image"))?
                .unwrap_or_default();
        let found: Vec<LaunchedInstance> = cloud
            .iter()
            .filter(|i| i.launch_id == Some(launch_id) && !i.state.is_gone())
            .map(|i| LaunchedInstance {
                id: i.id.clone(),
                instance_type: i.instance_type.clone(),
                private_ip: None,
                public_ip: None,
            })
            .collect();
        if found.is_empty() {
            tracing::warn!(%launch_id, "re-issuing a launch interrupted before any instance was listed");
            scaler.begin_launch(launch_id);
            let result =
                call_provider(scaler, region, launch_id, &image_id, &client_sha, count).await;
            scaler.end_launch(launch_id);
            result?;
        } else {
            tracing::warn!(%launch_id, instances = found.len(), "resolving a launch interrupted by a crash");
            record_instances(
                scaler,
                &region.name,
                launch_id,
                &image_id,
                &client_sha,
                &found,
            )
            .await?;
        }
    }
    Ok(())
}
