//! The scaler's settings: every one a `--flag` with an environment variable
//! of the same meaning, the flag winning (the contract of
//! [`berth_common::config`]), so a Procfile platform's config vars, the
//! systemd unit's environment file and the tests' argv drive it the same way.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use berth_common::config::CommonArgs;
use berth_common::db::DatabaseArgs;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "scaling-service",
    version,
    about = "Berth's scheduler: keeps warm buffers of free session slots per region, launches and terminates hosts, assigns users to sessions.",
    long_about = "Berth's scheduler. One or more replicas per environment; each region's controller runs on \
whichever replica holds that region's advisory lock, and every replica serves the assign API. It keeps \
target_free_slots warm per region (never more than max_hosts instances), assigns users to warm sessions \
(POST /sessions), rolls out images, and reaps dead, idle and orphaned hosts."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler and its API (the default).
    Run,
    /// Start rolling a region onto a new image.
    DeployStart {
        #[arg(long)]
        region: String,
        #[arg(long)]
        image_id: String,
        #[arg(long)]
        client_sha: String,
    },
    /// Give the release signal: the region's prepared deploy swaps to CURRENT.
    DeployRelease {
        #[arg(long)]
        region: String,
    },
    /// Local provider: stop every local host of this environment and remove its containers.
    LocalCleanup,
    /// Demand traces (replayed by `scripts/bench economics --trace FILE`).
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Print a one-use bootstrap token for a host started by hand (its row is
    /// created PRE_CONNECTION, or re-armed): give it to that host-service as
    /// BERTH_HOST_TOKEN. It is spent at the host's first registration and
    /// expires after the registration timeout.
    HostToken {
        /// The host's id (what host-service --local-host-id says).
        #[arg(long)]
        host_id: String,
        #[arg(long)]
        region: String,
        /// Sessions the host runs at once.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
        capacity: i32,
        #[arg(long, default_value = "local")]
        image_id: String,
        #[arg(long, default_value = "local")]
        instance_type: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write a region's demand as a CSV trace (`arrived_at,duration_s`, one
    /// line per assign; a session still running has its length so far), so
    /// it can be replayed against each policy before switching.
    Export {
        #[arg(long)]
        region: String,
        /// From when: an RFC 3339 instant, or a span back from now such as
        /// `7d`, `36h` or `90m`. Assigns are kept 15 days.
        #[arg(long, value_parser = parse_since)]
        since: chrono::DateTime<chrono::Utc>,
        /// The file to write (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// An RFC 3339 instant, or `<n>d`/`<n>h`/`<n>m` before now.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let unit = match s.chars().last() {
        Some('d') => 86_400,
        Some('h') => 3600,
        Some('m') => 60,
        _ => 0,
    };
    match s[..s.len().saturating_sub(1)].parse::<i64>() {
        Ok(n) if unit > 0 && n >= 0 => {
            Ok(chrono::Utc::now() - chrono::Duration::seconds(n * unit))
        }
        _ => Err(format!(
            "{s:?} is neither an RFC 3339 instant (2024-01-05T00:00:00Z) nor a span such as 7d, 36h or 90m"
        )),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// HTTP listen port (platform convention; TLS is the platform's job).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// HTTP listen address.
    #[arg(long, env = "BERTH_LISTEN_IP", default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,

    /// The URL hosts reach this control plane's host API at (`https://…`;
    /// plain `http://` only for loopback), handed to every launched host.
    /// Default: this listener's loopback address, which only the `local`
    /// provider's hosts can reach; required with `aws` outside development
    /// environments.
    #[arg(long, env = "BERTH_CONTROL_URL", value_parser = berth_common::host_api::parse_control_url)]
    pub control_url: Option<String>,

    /// Where hosts come from: `aws` (EC2) or `local` (host-service processes on this machine).
    #[arg(long, env = "BERTH_PROVIDER", value_enum, default_value_t = ProviderKind::Aws)]
    pub provider: ProviderKind,

    /// EC2 API endpoint override, e.g. an emulator at http://127.0.0.1:5055.
    #[arg(long, env = "BERTH_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,

    /// JWKS URL that user tokens (RS256/ES256) are verified against.
    #[arg(long, env = "BERTH_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,

    /// Shared HS256 secret for user tokens (development).
    #[arg(long, env = "BERTH_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<String>,

    /// Required `iss` of user tokens.
    #[arg(long, env = "BERTH_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// Required `aud` of user tokens.
    #[arg(long, env = "BERTH_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Region controller period in seconds (hints wake it sooner).
    #[arg(long, env = "BERTH_TICK_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tick_secs: u64,

    /// Hosts' heartbeat period. A host silent for 3 periods, counted only while
    /// this scaler was itself connected to the database, is UNREACHABLE: no new
    /// assigns, its running sessions left alone.
    #[arg(long, env = "BERTH_HEARTBEAT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,

    /// Seconds an UNREACHABLE host is given to come back before it is terminated
    /// and its sessions end as HOST_LOST (sooner if EC2 says it is not running).
    #[arg(long, env = "BERTH_UNREACHABLE_GRACE_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub unreachable_grace_secs: u64,

    /// Percent of a region's hosts that may go silent together before silence
    /// stops being evidence: above it (and at least 2 hosts) none of them is
    /// terminated for silence; a network or database fault is suspected instead.
    #[arg(long, env = "BERTH_MASS_SILENCE_PERCENT", default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub mass_silence_percent: u8,

    /// Seconds a launched host may take to register before it is terminated.
    #[arg(long, env = "BERTH_REGISTRATION_TIMEOUT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..))]
    pub registration_timeout_secs: u64,

    /// Seconds a DRAINING host may take to finish before it is terminated anyway.
    /// Keep it above the hosts' BERTH_DRAIN_DEADLINE_SECS (default 3600).
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT_SECS", default_value_t = 3900, value_parser = clap::value_parser!(u64).range(1..))]
    pub drain_timeout_secs: u64,

    /// Milliseconds an assign may take before it answers with an error.
    #[arg(long, env = "BERTH_ASSIGN_DEADLINE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub assign_deadline_ms: u64,

    /// Assign transactions in flight at once; more queue in the process within
    /// the assign deadline. A few per core: beyond that PostgreSQL spends its
    /// time switching between them (measured on 2 cores: 8 → 2,280/s, 32 → 1,200/s).
    #[arg(long, env = "BERTH_ASSIGN_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub assign_concurrency: u32,

    /// Seconds a deploy may take to prepare its buffer before it FAILS.
    #[arg(long, env = "BERTH_DEPLOY_TIMEOUT_SECS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub deploy_timeout_secs: u64,

    /// EC2 user data for new hosts (a file; `{region}` and `{env}` are substituted).
    #[arg(long, env = "BERTH_USER_DATA_FILE")]
    pub user_data_file: Option<PathBuf>,

    /// Largest accepted request body in bytes.
    #[arg(long, env = "BERTH_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Local provider: the host-service binary to start per "instance".
    #[arg(long, env = "BERTH_LOCAL_HOST_BINARY", default_value = "host-service")]
    pub local_host_binary: PathBuf,

    /// Local provider: directory for the local hosts' state, logs and pids.
    #[arg(long, env = "BERTH_LOCAL_DIR", default_value = "/var/tmp/berth-local")]
    pub local_dir: PathBuf,

    /// Local provider: the runtime local hosts keep warm.
    #[arg(long, env = "BERTH_LOCAL_RUNTIME", default_value = "desktop")]
    pub local_runtime: String,

    /// Serve the browser gateway: each session at `https://<session id>.<domain>/`
    /// (and `https://<session id>--<port>.<domain>/` for its other declared TCP
    /// ports). Point a wildcard DNS record `*.<domain>` at the gateway. Unset:
    /// no gateway.
    #[arg(long, env = "BERTH_GATEWAY_DOMAIN", value_parser = crate::gateway::address::parse_domain)]
    pub gateway_domain: Option<String>,

    /// The gateway's certificate chain (PEM, a wildcard for `*.<domain>`),
    /// read again when the file changes. With its key, the gateway listens
    /// with TLS on --gateway-addr; without, it answers on the API listener by
    /// Host header and TLS must end in front of it (X-Forwarded-Proto: https).
    #[arg(long, env = "BERTH_GATEWAY_TLS_CERT", requires = "gateway_tls_key")]
    pub gateway_tls_cert: Option<PathBuf>,

    /// The private key of --gateway-tls-cert (PEM).
    #[arg(long, env = "BERTH_GATEWAY_TLS_KEY", requires = "gateway_tls_cert")]
    pub gateway_tls_key: Option<PathBuf>,

    /// Where the gateway's TLS listener binds (with --gateway-tls-cert).
    #[arg(long, env = "BERTH_GATEWAY_ADDR", default_value = "0.0.0.0:8443")]
    pub gateway_addr: std::net::SocketAddr,

    /// The port browsers reach the gateway on, for the session URLs the API
    /// hands out (default: 443, or the TLS listener's port when it is not
    /// behind a load balancer, i.e. when this is unset and TLS is the gateway's).
    #[arg(long, env = "BERTH_GATEWAY_PUBLIC_PORT")]
    pub gateway_public_port: Option<u16>,

    /// Seconds a gateway login lasts (the cookie's lifetime; it also dies
    /// with its session and when the session token is re-issued).
    #[arg(long, env = "BERTH_GATEWAY_LOGIN_SECS", default_value_t = 12 * 3600, value_parser = clap::value_parser!(u64).range(60..=30 * 24 * 3600))]
    pub gateway_login_secs: u64,

    /// The claim of a user JWT (verified like any user's) that makes its
    /// bearer an operator when it holds --operator-claim-value (a string
    /// equal to it, or a list containing it). The operator token works too.
    #[arg(long, env = "BERTH_OPERATOR_CLAIM", default_value = "role")]
    pub operator_claim: String,

    /// The value of --operator-claim that marks an operator.
    #[arg(
        long,
        env = "BERTH_OPERATOR_CLAIM_VALUE",
        default_value = "berth-operator"
    )]
    pub operator_claim_value: String,

    /// Seconds a dashboard login (/ui/login) lasts; a login with a JWT ends
    /// with the JWT's expiry if that comes first.
    #[arg(long, env = "BERTH_OPERATOR_LOGIN_SECS", default_value_t = 8 * 3600, value_parser = clap::value_parser!(u64).range(60..=7 * 24 * 3600))]
    pub operator_login_secs: u64,

    /// Days the audit trail keeps its records.
    #[arg(long, env = "BERTH_AUDIT_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub audit_retention_days: u32,

    /// Seconds between two samples of each region's fleet (the dashboard's charts).
    #[arg(long, env = "BERTH_HISTORY_SAMPLE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub history_sample_secs: u64,

    /// Hours of fleet samples kept.
    #[arg(long, env = "BERTH_HISTORY_RETENTION_HOURS", default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=24 * 90))]
    pub history_retention_hours: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    Aws,
    Local,
}

impl Config {
    pub fn tick(&self) -> Duration {
        Duration::from_secs(self.tick_secs)
    }
    pub fn heartbeat_grace(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs * 3)
    }
    pub fn unreachable_grace(&self) -> Duration {
        Duration::from_secs(self.unreachable_grace_secs)
    }
    pub fn registration_timeout(&self) -> Duration {
        Duration::from_secs(self.registration_timeout_secs)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
    pub fn assign_deadline(&self) -> Duration {
        Duration::from_millis(self.assign_deadline_ms)
    }
    pub fn deploy_timeout(&self) -> Duration {
        Duration::from_secs(self.deploy_timeout_secs)
    }
}
