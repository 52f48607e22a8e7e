//! EC2 through aws-sdk-ec2. The SDK's standard retry mode gives exponential
//! back-off with jitter on throttling; capacity errors fall back across the
//! region's subnets, then its instance types (and, for `spot_with_fallback`,
//! from spot to on-demand within each). Each RunInstances carries a client
//! token derived from the launch id, so a retried request can never launch a
//! second set of instances.

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
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{
    tags, CloudInstance, InstanceState, LaunchRequest, LaunchedInstance, Provider, ProviderError,
    Purchase, Selector,
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

/// Error codes that mean "try another place, type or market", not "give up".
/// The last three come only from spot requests: EC2's own codes for no spot
/// capacity (`UnfulfillableCapacity`, besides `InsufficientInstanceCapacity`),
/// a spot price above the default maximum (the on-demand price) and the
/// account's spot quota.
const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InstanceLimitExceeded",
    "Unsupported",
    "InsufficientHostCapacity",
    "UnfulfillableCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
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

/// EC2's two markets: what one RunInstances asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Market {
    OnDemand,
    Spot,
}

impl Market {
    /// The markets asked, in order, for each instance type and subnet.
    fn for_purchase(purchase: Purchase) -> &'static [Market] {
        match purchase {
            Purchase::OnDemand => &[Market::OnDemand],
            Purchase::Spot => &[Market::Spot],
            Purchase::SpotWithFallback => &[Market::Spot, Market::OnDemand],
        }
    }

    /// The `berth:purchase` tag's value.
    fn tag_value(self) -> &'static str {
        match self {
            Market::OnDemand => "on_demand",
            Market::Spot => "spot",
        }
    }

    /// One-time: a refused or interrupted request is not reopened behind the
    /// controller's back (it launches replacements itself). Terminate: an
    /// interrupted host is gone for good, and its sessions end HOST_LOST.
    fn options(self) -> Option<InstanceMarketOptionsRequest> {
        match self {
            Market::OnDemand => None,
            Market::Spot => Some(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            ),
        }
    }
}

/// A client token (≤ 64 chars) unique to this launch, type, subnet and
/// market. A spot and an on-demand request are different requests (EC2
/// refuses a token reused with other parameters); on-demand tokens are the
/// ones made before spot existed, so a launch an older release left PENDING is
/// re-issued with its original tokens.
fn client_token(
    request: &LaunchRequest,
    instance_type: &str,
    subnet: Option<&str>,
    market: Market,
) -> String {
    let mut key = format!("{instance_type}/{}", subnet.unwrap_or("-"));
    if market == Market::Spot {
        key.push_str("/spot");
    }
    let digest = Sha256::digest(key.as_bytes());
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

/// What every RunInstances of one launch shares.
struct Shared {
    tags: Vec<Tag>,
    user_data: Option<String>,
    groups: Vec<String>,
}

/// One RunInstances: the launch's instances as `instance_type` in `subnet`,
/// bought on `market` and tagged so.
fn run_instances(
    client: &Client,
    request: &LaunchRequest,
    shared: &Shared,
    instance_type: &str,
    subnet: Option<&str>,
    market: Market,
) -> RunInstancesFluentBuilder {
    let mut tags = shared.tags.clone();
    tags.push(
        Tag::builder()
            .key(tags::PURCHASE)
            .value(market.tag_value())
            .build(),
    );
    let mut run = client
        .run_instances()
        .image_id(&request.image_id)
        .instance_type(InstanceType::from(instance_type))
        .min_count(request.count)
        .max_count(request.count)
        .client_token(client_token(request, instance_type, subnet, market))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        )
        .set_user_data(shared.user_data.clone())
        .set_subnet_id(subnet.map(str::to_owned))
        .set_instance_market_options(market.options())
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
    if !shared.groups.is_empty() {
        run = run.set_security_group_ids(Some(shared.groups.clone()));
    }
    if let Some(profile) = &request.iam_instance_profile {
        run = run.iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .name(profile)
                .build(),
        );
    }
    run
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
            let shared = Shared {
                tags: request
                    .tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
                user_data: request
                    .user_data
                    .as_ref()
                    .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
                groups,
            };
            let mut capacity_errors = vec![];
            // Spot and on-demand capacity are separate pools: a spot refusal
            // says nothing about on-demand capacity for this type in this
            // subnet, so the fallback asks for the same request on-demand at
            // once instead of treating the type as full and moving on. Only
            // when every market asked here refuses does the next subnet, then
            // the next type, get a turn: the region's type order is its
            // preference (its buffer is sized by the first type) and wins over
            // price.
            for instance_type in &request.instance_types {
                for subnet in &subnets {
                    let subnet = subnet.as_deref();
                    let place = subnet.unwrap_or("default subnet");
                    for &market in Market::for_purchase(request.purchase) {
                        let purchase = market.tag_value();
                        let run =
                            run_instances(&client, request, &shared, instance_type, subnet, market);
                        match run.send().await.map_err(classify) {
                            Ok(out) => {
                                if market == Market::OnDemand
                                    && request.purchase == Purchase::SpotWithFallback
                                {
                                    tracing::warn!(region = request.region, launch_id = %request.launch_id, instance_type, subnet = place, "EC2 refused spot; launched on-demand instead");
                                } else {
                                    tracing::info!(region = request.region, launch_id = %request.launch_id, instance_type, subnet = place, purchase, "launched");
                                }
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
                                    .collect());
                            }
                            Err(ProviderError::Capacity(why)) => {
                                tracing::warn!(instance_type, subnet = place, purchase, %why, "no capacity; trying the next option");
                                capacity_errors
                                    .push(format!("{instance_type} {purchase} in {place}: {why}"));
                            }
                            Err(other) => return Err(other),
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(purchase: Purchase) -> LaunchRequest {
        LaunchRequest {
            launch_id: uuid::Uuid::from_u128(1),
            region: "us-east-1".into(),
            instance_types: vec!["t3.large".into()],
            image_id: "ami-1".into(),
            count: 1,
            tags: vec![],
            user_data: None,
            bootstrap_token: Default::default(),
            control_url: String::new(),
            subnets: vec![],
            security_groups: vec![],
            iam_instance_profile: None,
            purchase,
        }
    }

    #[test]
    fn on_demand_client_tokens_are_those_of_older_releases_and_spot_ones_differ() {
        let request = request(Purchase::SpotWithFallback);
        let id = "00000000000000000000000000000001";
        assert_eq!(
            client_token(&request, "t3.large", Some("subnet-1"), Market::OnDemand),
            format!("{id}-9c56e84ee3b3043d")
        );
        assert_eq!(
            client_token(&request, "t3.large", None, Market::OnDemand),
            format!("{id}-10f02d7970ff8e15")
        );
        assert_eq!(
            client_token(&request, "t3.large", Some("subnet-1"), Market::Spot),
            format!("{id}-b55feb3c80677415")
        );
    }

    #[test]
    fn only_spot_requests_carry_market_options_and_fallback_asks_spot_first() {
        assert_eq!(
            Market::for_purchase(Purchase::OnDemand),
            &[Market::OnDemand]
        );
        assert_eq!(Market::for_purchase(Purchase::Spot), &[Market::Spot]);
        assert_eq!(
            Market::for_purchase(Purchase::SpotWithFallback),
            &[Market::Spot, Market::OnDemand]
        );
        assert!(Market::OnDemand.options().is_none());
        let spot = Market::Spot.options().expect("spot has market options");
        assert_eq!(spot.market_type(), Some(&MarketType::Spot));
        let options = spot.spot_options().expect("spot options");
        assert_eq!(
            options.spot_instance_type(),
            Some(&SpotInstanceType::OneTime)
        );
        assert_eq!(
            options.instance_interruption_behavior(),
            Some(&InstanceInterruptionBehavior::Terminate)
        );
    }
}
