//! EC2 through aws-sdk-ec2. The SDK's standard retry mode gives exponential
//! back-off with jitter on throttling; capacity errors fall back across the
//! region's subnets, then its instance types. Each RunInstances carries a
//! client token derived from the launch id, so a retried request can never
//! launch a second set of instances.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, ResourceType, Tag,
    TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{
    tags, CloudInstance, InstanceState, LaunchRequest, LaunchedInstance, Provider, ProviderError,
    Selector,
};

#[derive(Debug)]
pub struct AwsProvider {
    config: SdkConfig,
    endpoint: Option<String>,
    clients: Mutex<HashMap<String, Client>>,
}

/// The shared configuration's region when neither the environment nor the
/// profile names one (EC2 calls always name their own).
pub const FALLBACK_REGION: &str = "us-east-1";

/// Error codes that mean "try another place or type", not "give up".
const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InstanceLimitExceeded",
    "Unsupported",
    "InsufficientHostCapacity",
];
const THROTTLE_CODES: &[&str] = &["RequestLimitExceeded", "Throttling", "ThrottlingException"];

impl AwsProvider {
    /// The SDK configuration without probes of the instance metadata service
    /// (IMDS) that cannot help: off EC2 each probe waits for a timeout and logs
    /// a long warning. Every EC2 call names its region (the region's row), so
    /// the shared region only seeds credential providers: it comes from
    /// `AWS_REGION`/`AWS_DEFAULT_REGION` or the profile, else [`FALLBACK_REGION`],
    /// never from IMDS. Credentials come only from the environment when
    /// `AWS_ACCESS_KEY_ID` is set; else, with an endpoint override (an
    /// emulator), from the profile, web identity or container endpoint, never
    /// IMDS; else from the SDK's default chain, whose last link is the instance
    /// profile (IMDS) of a scaler running on EC2.
    pub async fn new(endpoint: Option<String>) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let region = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::new())
            .or_else(Region::from_static(FALLBACK_REGION))
            .region()
            .await
            .unwrap_or(Region::from_static(FALLBACK_REGION));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(region.clone())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            );
        let explicit_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty());
        if explicit_keys {
            loader = loader.credentials_provider(EnvironmentVariableCredentialsProvider::new());
        } else if endpoint.is_some() {
            let conf = ProviderConfig::without_region()
                .with_http_client(http)
                .with_region(Some(region));
            loader = loader.credentials_provider(
                CredentialsProviderChain::first_try(
                    "Profile",
                    ProfileFileCredentialsProvider::builder()
                        .configure(&conf)
                        .build(),
                )
                .or_else(
                    "WebIdentityToken",
                    WebIdentityTokenCredentialsProvider::builder()
                        .configure(&conf)
                        .build(),
                )
                .or_else(
                    "EcsContainer",
                    EcsCredentialsProvider::builder().configure(&conf).build(),
                ),
            );
        }
        let config = loader.load().await;
        Self {
            config,
            endpoint,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let mut builder = aws_sdk_ec2::config::Builder::from(&self.config)
                    .region(Region::new(region.to_owned()));
                if let Some(endpoint) = &self.endpoint {
                    builder = builder.endpoint_url(endpoint);
                }
                let config = builder.build();
                Client::from_conf(config)
            })
            .clone()
    }

    async fn resolve(
        &self,
        client: &Client,
        kind: &str,
        selectors: &[Selector],
    ) -> Result<Vec<String>, ProviderError> {
        let mut ids = vec![];
        for selector in selectors {
            match selector {
                Selector::Id(id) => ids.push(id.clone()),
                Selector::Tags(wanted) => {
                    let filters: Vec<Filter> = wanted
                        .iter()
                        .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build())
                        .collect();
                    if kind == "subnet" {
                        let out = client
                            .describe_subnets()
                            .set_filters(Some(filters))
                            .send()
                            .await
                            .map_err(classify)?;
                        ids.extend(
                            out.subnets()
                                .iter()
                                .filter_map(|s| s.subnet_id().map(str::to_owned)),
                        );
                    } else {
                        let out = client
                            .describe_security_groups()
                            .set_filters(Some(filters))
                            .send()
                            .await
                            .map_err(classify)?;
                        ids.extend(
                            out.security_groups()
                                .iter()
                                .filter_map(|g| g.group_id().map(str::to_owned)),
                        );
                    }
                }
            }
        }
        if ids.is_empty() && !selectors.is_empty() {
            return Err(ProviderError::Rejected(format!(
                "no {kind} matches the region's selectors {selectors:?}"
            )));
        }
        Ok(ids)
    }
}

/// A client token (≤ 64 chars) unique to this launch, type and subnet.
fn client_token(request: &LaunchRequest, instance_type: &str, subnet: Option<&str>) -> String {
    let digest = Sha256::digest(format!("{instance_type}/{}", subnet.unwrap_or("-")).as_bytes());
    format!(
        "{}-{}",
        request.launch_id.simple(),
        &hex::encode(digest)[..16]
    )
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    error: aws_sdk_ec2::error::SdkError<E>,
) -> ProviderError {
    let code = error.code().unwrap_or_default().to_owned();
    let message = format!(
        "{}: {}",
        if code.is_empty() { "error" } else { &code },
        error.message().unwrap_or("no message")
    );
    match &error {
        aws_sdk_ec2::error::SdkError::ServiceError(_)
            if CAPACITY_CODES.contains(&code.as_str()) =>
        {
            ProviderError::Capacity(message)
        }
        aws_sdk_ec2::error::SdkError::ServiceError(_)
            if THROTTLE_CODES.contains(&code.as_str()) =>
        {
            ProviderError::Throttled(message)
        }
        aws_sdk_ec2::error::SdkError::ServiceError(service)
            if service.raw().status().is_server_error() =>
        {
            ProviderError::Unavailable(message)
        }
        aws_sdk_ec2::error::SdkError::ServiceError(_) => ProviderError::Rejected(message),
        other => ProviderError::Unavailable(format!("{other:?}")),
    }
}

impl Provider for AwsProvider {
    fn launch<'a>(
        &'a self,
        request: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Vec<LaunchedInstance>, ProviderError>> {
        Box::pin(async move {
            let client = self.client(&request.region);
            let subnets = self.resolve(&client, "subnet", &request.subnets).await?;
            let groups = self
                .resolve(&client, "security group", &request.security_groups)
                .await?;
            let subnets: Vec<Option<String>> = if subnets.is_empty() {
                vec![None]
            } else {
                subnets.into_iter().map(Some).collect()
            };
            let tags: Vec<Tag> = request
                .tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect();
            let user_data = request
                .user_data
                .as_ref()
                .map(|u| base64::engine::general_purpose::STANDARD.encode(u));
            let mut capacity_errors = vec![];
            for instance_type in &request.instance_types {
                for subnet in &subnets {
                    let mut run = client
                        .run_instances()
                        .image_id(&request.image_id)
                        .instance_type(InstanceType::from(instance_type.as_str()))
                        .min_count(request.count)
                        .max_count(request.count)
                        .client_token(client_token(request, instance_type, subnet.as_deref()))
                        .tag_specifications(
                            TagSpecification::builder()
                                .resource_type(ResourceType::Instance)
                                .set_tags(Some(tags.clone()))
                                .build(),
                        )
                        .set_user_data(user_data.clone())
                        .set_subnet_id(subnet.clone())
                        // IMDSv2 only, one hop: a session container sits a hop
                        // behind the host's bridge, so even without the host's
                        // filter rules its token request would not come back.
                        .metadata_options(
                            InstanceMetadataOptionsRequest::builder()
                                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                                .http_tokens(HttpTokensState::Required)
                                .http_put_response_hop_limit(1)
                                .build(),
                        );
                    if !groups.is_empty() {
                        run = run.set_security_group_ids(Some(groups.clone()));
                    }
                    if let Some(profile) = &request.iam_instance_profile {
                        run = run.iam_instance_profile(
                            IamInstanceProfileSpecification::builder()
                                .name(profile)
                                .build(),
                        );
                    }
                    match run.send().await.map_err(classify) {
                        Ok(out) => {
                            return Ok(out
                                .instances()
                                .iter()
                                .filter_map(|i| {
                                    Some(LaunchedInstance {
                                        id: i.instance_id()?.to_owned(),
                                        instance_type: instance_type.clone(),
                                        private_ip: i.private_ip_address().map(str::to_owned),
                                        public_ip: i.public_ip_address().map(str::to_owned),
                                    })
                                })
                                .collect())
                        }
                        Err(ProviderError::Capacity(why)) => {
                            tracing::warn!(instance_type, subnet = subnet.as_deref().unwrap_or("default"), %why, "no capacity; trying the next option");
                            capacity_errors.push(format!(
                                "{instance_type} in {}: {why}",
                                subnet.as_deref().unwrap_or("default subnet")
                            ));
                        }
                        Err(other) => return Err(other),
                    }
                }
            }
            Err(ProviderError::Capacity(capacity_errors.join("; ")))
        })
    }

    fn terminate<'a>(
        &'a self,
        region: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let client = self.client(region);
            match client
                .terminate_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {
                    // Some are gone already: terminate the rest one by one.
                    for id in ids {
                        match client.terminate_instances().instance_ids(id).send().await {
                            Ok(_) => {}
                            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {}
                            Err(e) => return Err(classify(e)),
                        }
                    }
                    Ok(())
                }
                Err(e) => Err(classify(e)),
            }
        })
    }

    fn describe<'a>(
        &'a self,
        region: &'a str,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudInstance>, ProviderError>> {
        Box::pin(async move {
            let client = self.client(region);
            let filter = Filter::builder()
                .name(format!("tag:{}", tags::ENVIRONMENT))
                .values(environment)
                .build();
            let mut pages = client
                .describe_instances()
                .filters(filter)
                .into_paginator()
                .send();
            let mut found = vec![];
            while let Some(page) = pages.next().await {
                let page = page.map_err(classify)?;
                for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                    let Some(id) = instance.instance_id() else {
                        continue;
                    };
                    let tag = |key: &str| {
                        instance
                            .tags()
                            .iter()
                            .find(|t| t.key() == Some(key))
                            .and_then(|t| t.value())
                    };
                    if tag(tags::REGION).is_some_and(|r| r != region) {
                        continue;
                    }
                    let state = match instance.state().and_then(|s| s.name()) {
                        Some(InstanceStateName::Pending) => InstanceState::Pending,
                        Some(InstanceStateName::Running) => InstanceState::Running,
                        Some(InstanceStateName::Stopping) => InstanceState::Stopping,
                        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
                        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
                        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
                        _ => InstanceState::Pending,
                    };
                    found.push(CloudInstance {
                        id: id.to_owned(),
                        state,
                        instance_type: instance
                            .instance_type()
                            .map(|t| t.as_str().to_owned())
                            .unwrap_or_default(),
                        launch_id: tag(tags::LAUNCH_ID).and_then(|l| l.parse().ok()),
                    });
                }
            }
            Ok(found)
        })
    }
}
