//! Where hosts come from. `aws` launches EC2 instances; `local` starts real
//! host-service processes on this machine. The controller owns the policy and
//! the bookkeeping (launch rows, host rows); a provider only talks to its cloud.

pub mod aws;
pub mod local;

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use uuid::Uuid;

/// Tag keys every Berth instance carries.
pub mod tags {
    pub const ENVIRONMENT: &str = "berth:environment";
    pub const REGION: &str = "berth:region";
    pub const LAUNCH_ID: &str = "berth:launch-id";
    pub const MANAGED_BY: &str = "berth:managed-by";
    pub const MANAGED_BY_VALUE: &str = "berth-scaling-service";
    /// How the instance was bought: `spot` or `on_demand` (aws only).
    pub const PURCHASE: &str = "berth:purchase";
}

/// How a region's instances are bought (`regions.purchase`). Only the aws
/// provider acts on it; local hosts are not bought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Purchase {
    #[default]
    OnDemand,
    /// Spot only: when EC2 refuses, the launch fails (the next pass retries).
    Spot,
    /// Spot first; on-demand for the same request when EC2 refuses spot for
    /// capacity.
    SpotWithFallback,
}

impl Purchase {
    pub fn as_str(self) -> &'static str {
        match self {
            Purchase::OnDemand => "on_demand",
            Purchase::Spot => "spot",
            Purchase::SpotWithFallback => "spot_with_fallback",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown purchase {0:?}; expected on_demand, spot or spot_with_fallback")]
pub struct UnknownPurchase(String);

impl std::str::FromStr for Purchase {
    type Err = UnknownPurchase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on_demand" => Ok(Purchase::OnDemand),
            "spot" => Ok(Purchase::Spot),
            "spot_with_fallback" => Ok(Purchase::SpotWithFallback),
            other => Err(UnknownPurchase(other.to_owned())),
        }
    }
}

/// For reading `regions.purchase` (text) into a row struct.
impl TryFrom<String> for Purchase {
    type Error = UnknownPurchase;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Subnet or security group selector from the region row:
/// `{"id": "subnet-…"}` or `{"tags": {"k": "v"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Id(String),
    Tags(BTreeMap<String, String>),
}

/// A launch's one-use bootstrap token (see `host_api::identity`); never
/// printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BootstrapToken(pub String);

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapToken(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub launch_id: Uuid,
    pub region: String,
    /// In preference order: on capacity errors the next is tried.
    pub instance_types: Vec<String>,
    pub image_id: String,
    pub count: i32,
    pub tags: Vec<(String, String)>,
    pub user_data: Option<String>,
    /// Handed to the instances (in the user data, or the local host's
    /// environment) so they can register with the host API.
    pub bootstrap_token: BootstrapToken,
    /// Where the instances reach the host API (BERTH_CONTROL_URL).
    pub control_url: String,
    pub subnets: Vec<Selector>,
    pub security_groups: Vec<Selector>,
    pub iam_instance_profile: Option<String>,
    pub purchase: Purchase,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchedInstance {
    pub id: String,
    pub instance_type: String,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    /// Gone for good (or on its way out): nothing will register from it.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudInstance {
    pub id: String,
    pub state: InstanceState,
    pub instance_type: String,
    pub launch_id: Option<Uuid>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("no capacity: {0}")]
    Capacity(String),
    #[error("throttled by the cloud API: {0}")]
    Throttled(String),
    #[error("the cloud API refused the request: {0}")]
    Rejected(String),
    #[error("the cloud API is unavailable: {0}")]
    Unavailable(String),
}

pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Launches `count` instances (all-or-nothing per attempt).
    fn launch<'a>(
        &'a self,
        request: &'a LaunchRequest,
    ) -> BoxFuture<'a, Result<Vec<LaunchedInstance>, ProviderError>>;
    /// Terminates; ids that are already gone are fine.
    fn terminate<'a>(
        &'a self,
        region: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Every instance tagged for `environment` in `region`, in any state.
    fn describe<'a>(
        &'a self,
        region: &'a str,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudInstance>, ProviderError>>;
}

#[cfg(test)]
mod tests {
    use super::Purchase;

    #[test]
    fn purchases_read_back_as_written_and_unknown_ones_are_refused() {
        for purchase in [
            Purchase::OnDemand,
            Purchase::Spot,
            Purchase::SpotWithFallback,
        ] {
            assert_eq!(purchase.as_str().parse::<Purchase>().ok(), Some(purchase));
        }
        let refused = "reserved".parse::<Purchase>().unwrap_err().to_string();
        assert!(refused.contains("\"reserved\""), "{refused}");
    }
}
