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
