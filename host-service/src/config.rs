//! The daemon's settings: every one a `--flag` with an environment variable
//! of the same meaning, the flag winning (the contract of
//! [`berth_common::config`]), so the systemd unit's environment file, the
//! scaler's local provider (flags) and the tests drive it the same way.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use berth_common::config::{strict_bool, CommonArgs, NumberRange};
use clap::{ArgAction, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "host-service",
    version,
    about = "Berth's host daemon: registers this instance, keeps warm session containers and finishes sessions for users.",
    long_about = "Berth's host daemon. Run as root under systemd on every host. It reads its identity from \
EC2 instance metadata (IMDSv2) or, with --local, from flags; registers the host with the control plane; keeps \
free_slots warm session containers; and when the scaler allocates a session, finishes it for the user's \
client over HTTPS (PUT /json_transport). It talks to the fleet only through the control plane's host API \
(BERTH_CONTROL_URL), registering with a bootstrap token (BERTH_HOST_TOKEN) the first time. SIGTERM stops the \
daemon only (sessions keep running); the host ends when the control plane drains it or `host-service drain` is run."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Mark this host DRAINING; the running daemon then drains and exits.
    Drain,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The control plane's URL (`https://…`; plain `http://` only to a
    /// loopback address): every read and report about this host goes to its
    /// host API. The host holds no database credentials. Several URLs,
    /// comma-separated, name replicas: a call that cannot reach one goes to
    /// the next.
    #[arg(long, env = "BERTH_CONTROL_URL", value_delimiter = ',', required = true,
          value_parser = berth_common::host_api::parse_control_url)]
    pub control_url: Vec<String>,

    /// One-use bootstrap token that registers this host the first time (from
    /// its launch's user data, the local provider, or `scaling-service
    /// host-token`); registration returns the host credential, kept in the
    /// state dir (0600) and used from then on.
    #[arg(
        long,
        env = "BERTH_HOST_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub host_token: Option<HostToken>,

    /// PEM file with the CA certificate(s) the control plane's certificate is
    /// checked against (a private CA); unset, the system's web roots.
    #[arg(long, env = "BERTH_CONTROL_CA")]
    pub control_ca: Option<PathBuf>,

    /// Instance metadata (IMDSv2) base URL.
    #[arg(long, env = "BERTH_IMDS_ENDPOINT", default_value = berth_common::imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,

    /// Run without EC2: identity from the --local-* flags (the host row comes
    /// from `scaling-service host-token`, with its capacity).
    #[arg(long, env = "BERTH_LOCAL", default_value_t = false, action = ArgAction::Set, require_equals = true,
          num_args = 0..=1, default_missing_value = "true", value_parser = strict_bool())]
    pub local: bool,

    /// Local mode: this host's id.
    #[arg(long, env = "BERTH_LOCAL_HOST_ID", default_value = "local-1")]
    pub local_host_id: String,

    /// Local mode: region name recorded for this host.
    #[arg(long, env = "BERTH_LOCAL_REGION", default_value = "local")]
    pub local_region: String,

    /// Local mode: image id recorded for this host.
    #[arg(long, env = "BERTH_LOCAL_IMAGE_ID", default_value = "local")]
    pub local_image_id: String,

    /// Local mode: instance type recorded for this host.
    #[arg(long, env = "BERTH_LOCAL_INSTANCE_TYPE", default_value = "local")]
    pub local_instance_type: String,

    /// Local mode: sessions this host expects to run at once. The control
    /// plane's row decides (`scaling-service host-token --capacity`); a
    /// different value is reported at start.
    #[arg(long, env = "BERTH_LOCAL_CAPACITY")]
    pub local_capacity: Option<u16>,

    /// Address clients reach this host at (overrides metadata; local mode default 127.0.0.1).
    #[arg(long, env = "BERTH_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,

    /// Directory for the TLS key and certificate, sessions/, sockets/ and logs/.
    #[arg(long, env = "BERTH_STATE_DIR", default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,

    /// HTTPS listen address of the host API.
    #[arg(long, env = "BERTH_API_ADDR", default_value = "0.0.0.0:4678")]
    pub api_addr: SocketAddr,

    /// Host ports handed to sessions. Keep it outside the kernel's ephemeral
    /// range (ip_local_port_range, usually 32768-60999) or binds fail at random.
    #[arg(long, env = "BERTH_PORT_RANGE", default_value = "20000-32000")]
    pub port_range: NumberRange<u16>,

    /// TTY numbers handed to sessions, mapped into containers as /dev/ttyN.
    #[arg(long, env = "BERTH_TTY_RANGE", default_value = "10-63")]
    pub tty_range: NumberRange<u8>,

    /// Virtual input devices: `on` = required, `off` = never, `auto` = when /dev/uinput exists.
    #[arg(long, env = "BERTH_UINPUT", value_enum, default_value_t = UinputMode::Auto)]
    pub uinput: UinputMode,

    /// Heartbeat period in seconds (jittered by ±10 %).
    #[arg(long, env = "BERTH_HEARTBEAT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,

    /// Runtime (row of the `runtimes` table) whose containers this host keeps warm.
    #[arg(long, env = "BERTH_RUNTIME", default_value = "desktop")]
    pub runtime: String,

    /// Seconds an allocated session waits for its client's json_transport before it is torn down.
    #[arg(long, env = "BERTH_CLIENT_TIMEOUT_SECS", default_value_t = 60)]
    pub client_timeout_secs: u64,

    /// Seconds a draining host lets running sessions finish before stopping them.
    #[arg(long, env = "BERTH_DRAIN_DEADLINE_SECS", default_value_t = 3600)]
    pub drain_deadline_secs: u64,

    /// Size cap, in MiB, of each directory a session can write on the host
    /// (`/berth`, its sockets, `/var/log/berth`): each is a tmpfs of this size,
    /// whose pages count against the session's memory limit. A session that
    /// fills one gets ENOSPC; the host's disk and other sessions are untouched.
    #[arg(long, env = "BERTH_SESSION_STORAGE_MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub session_storage_mib: u32,

    /// Seconds a container gets between SIGTERM and SIGKILL on teardown.
    #[arg(long, env = "BERTH_STOP_GRACE_SECS", default_value_t = 10)]
    pub stop_grace_secs: u32,

    /// Host address session ports are published on.
    #[arg(long, env = "BERTH_PUBLISH_IP", default_value = "0.0.0.0")]
    pub publish_ip: IpAddr,

    /// Largest accepted request body in bytes (json_transport).
    #[arg(long, env = "BERTH_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Seconds a client gets for its TLS handshake, again for the first byte of
    /// a request, and again for its headers; a connection that says nothing is closed.
    #[arg(long, env = "BERTH_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_timeout_secs: u64,

    /// Seconds a client gets to send a whole json_transport body.
    #[arg(long, env = "BERTH_BODY_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub body_timeout_secs: u64,

    /// Extra Docker security options for session containers (e.g. apparmor=berth-session), comma-separated.
    #[arg(long, env = "BERTH_SECURITY_OPTS", value_delimiter = ',')]
    pub security_opts: Vec<String>,

    /// Capabilities added back after all are dropped, comma-separated.
    #[arg(
        long,
        env = "BERTH_CAP_ADD",
        value_delimiter = ',',
        default_value = "CHOWN,DAC_OVERRIDE,FOWNER,SETUID,SETGID,KILL,NET_BIND_SERVICE"
    )]
    pub cap_add: Vec<String>,

    /// Seconds between retries of what this host still owes its sessions
    /// (claims, teardowns) as the control plane last described them; the
    /// watch stream's snapshot on every (re)connect is the full re-read.
    #[arg(long, env = "BERTH_RESYNC_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resync_secs: u64,

    /// Root of users' persistent data (e.g. an EFS mount): each user gets one
    /// directory under it, mounted in every session of a runtime with a
    /// user_volume. Unset: such runtimes are refused at start.
    #[arg(long, env = "BERTH_USER_DATA_ROOT")]
    pub user_data_root: Option<PathBuf>,

    /// This host's GPU device ids for sessions of GPU runtimes: `auto` (the
    /// NVIDIA device nodes present, /dev/nvidia<N>), `none`, or a list
    /// (`0,1`). GPU hosts need the NVIDIA driver and Container Toolkit (or a
    /// CDI spec for `cdi:` runtimes).
    #[arg(long, env = "BERTH_GPUS", default_value = "auto")]
    pub gpus: String,

    /// Seconds between looks at instance metadata for a spot interruption
    /// notice or rebalance recommendation (EC2 gives two minutes' notice);
    /// 0: never. Not in local mode without metadata.
    #[arg(long, env = "BERTH_SPOT_POLL_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=120))]
    pub spot_poll_secs: u64,

    /// Seconds between idle checks of sessions whose runtime has an idle timeout.
    #[arg(long, env = "BERTH_IDLE_CHECK_SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub idle_check_secs: u64,

    /// Lifetime in seconds of the proxy cookie set by /sessions/<id>/login.
    #[arg(long, env = "BERTH_PROXY_COOKIE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub proxy_cookie_secs: u64,

    /// Most warm containers created at the same time while refilling the pool.
    #[arg(long, env = "BERTH_WARM_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub warm_concurrency: u16,
}

/// The bootstrap token as the command line gives it; never shown in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct HostToken(pub String);

impl std::str::FromStr for HostToken {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for HostToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostToken(<redacted>)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UinputMode {
    On,
    Off,
    Auto,
}

impl Config {
    pub fn heartbeat_period(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
    pub fn resync_period(&self) -> Duration {
        Duration::from_secs(self.resync_secs)
    }
    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_secs)
    }
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain_deadline_secs)
    }
    pub fn sessions_dir(&self) -> PathBuf {
        self.state_dir.join("sessions")
    }
    pub fn sockets_dir(&self) -> PathBuf {
        self.state_dir.join("sockets")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// What each session's app may read about itself (`session::facts`).
    pub fn facts_dir(&self) -> PathBuf {
        self.state_dir.join("facts")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["host-service", "--control-url", "http://127.0.0.1:8080"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn local_is_a_flag_that_does_not_swallow_the_subcommand() {
        let cli = parse(&["--local", "drain"]);
        assert!(cli.config.local);
        assert!(matches!(cli.command, Some(Command::Drain)));
        assert!(!parse(&["--local=false"]).config.local);
        assert!(parse(&["--local=true"]).config.local);
        assert!(!parse(&[]).config.local);
    }

    #[test]
    fn booleans_take_only_true_or_false() {
        for bad in [
            "--local=no",
            "--local=0",
            "--local=yes",
            "--local=1",
            "--local=on",
        ] {
            let argv = [
                "host-service",
                "--control-url",
                "http://127.0.0.1:8080",
                bad,
            ];
            let error = Cli::try_parse_from(argv).expect_err(bad);
            assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue, "{bad}");
            assert!(
                error.to_string().contains("[possible values: true, false]"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_bootstrap_token_may_start_with_a_hyphen() {
        // Tokens are base64url: one in 64 starts with '-'.
        let cli = parse(&["--host-token", "-5abcdef", "drain"]);
        let token = cli.config.host_token.unwrap();
        assert_eq!(token.0, "-5abcdef");
        assert!(!format!("{token:?}").contains("5abcdef"), "never shown");
        assert!(matches!(cli.command, Some(Command::Drain)));
    }

    #[test]
    fn control_urls_are_a_list_of_replicas() {
        let cli = parse(&[]);
        assert_eq!(cli.config.control_url, ["http://127.0.0.1:8080"]);
        let argv = [
            "host-service",
            "--control-url",
            "https://a.example.com,https://b.example.com/",
        ];
        let cli = Cli::try_parse_from(argv).unwrap();
        assert_eq!(
            cli.config.control_url,
            ["https://a.example.com", "https://b.example.com"]
        );
        let argv = ["host-service", "--control-url", "http://10.0.0.1:8080"];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "plain http off loopback"
        );
    }

    #[test]
    fn ranges_and_modes_are_validated() {
        let argv = [
            "host-service",
            "--control-url",
            "http://127.0.0.1:8080",
            "--port-range",
            "40000-30000",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = [
            "host-service",
            "--control-url",
            "http://127.0.0.1:8080",
            "--uinput",
            "maybe",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
        let cli = parse(&["--tty-range", "20-29", "--uinput", "off"]);
        assert_eq!(cli.config.tty_range.0, 20..=29);
        assert_eq!(cli.config.uinput, UinputMode::Off);
    }
}
