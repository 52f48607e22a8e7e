//! The session network boundary. Packet filter rules keep session containers
//! from every address of their own host (the API, sshd, anything bound
//! there), from each other, and from the link-local range that holds the
//! instance metadata endpoint. Sessions with open egress sit on Docker's
//! default bridge; a runtime with egress `none` gets Berth's sealed bridge,
//! which Docker keeps from routing anywhere. Installed at start as one atomic
//! replacement of Berth's own chains (a restart, or several daemons on one
//! machine, never duplicate them) and read back; without them the daemon
//! starts no session.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::InspectNetworkOptions;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::docker::{is_not_found, DockerEngine};
use crate::runtime::Egress;

/// A Docker bridge network sessions join.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionNetwork {
    /// Docker's name for it (what containers join).
    pub name: &'static str,
    /// The bridge interface Berth creates it with (at most 15 characters);
    /// `None` for Docker's default bridge, whose interface is read from it.
    pub bridge: Option<&'static str>,
    /// Docker's `internal`: no route off the bridge.
    pub internal: bool,
}

/// Docker's default bridge. Not a network of Berth's own: Docker gives every
/// container that starts on a network it did not create by default an
/// embedded DNS server, set up by a re-exec and ten iptables runs inside the
/// container (measured: 35-95 ms more per start, a third of a cold
/// spin-up). Isolation does not come from Docker's settings for it but from
/// the rules below, which hold whatever its inter-container setting is.
pub const OPEN: SessionNetwork = SessionNetwork {
    name: "bridge",
    bridge: None,
    internal: false,
};

/// For runtimes without egress (they pay the DNS setup on start).
pub const SEALED: SessionNetwork = SessionNetwork {
    name: "berth-sealed",
    bridge: Some("berth-sealed0"),
    internal: true,
};

const NETWORKS: [&SessionNetwork; 2] = [&OPEN, &SEALED];

impl Egress {
    pub fn network(self) -> &'static SessionNetwork {
        match self {
            Egress::Open => &OPEN,
            Egress::None => &SEALED,
        }
    }
}

/// Link-local IPv4: the instance metadata endpoint (169.254.169.254), the
/// Amazon DNS and time addresses; sessions reach none of it.
pub const METADATA_RANGE: &str = "169.254.0.0/16";

/// Traffic from sessions to the host itself.
pub const INPUT_CHAIN: &str = "BERTH-INPUT";
/// Traffic from sessions routed through the host (reached from DOCKER-USER,
/// which Docker evaluates before its own forwarding rules).
pub const FORWARD_CHAIN: &str = "BERTH-FORWARD";

const REJECT: &str = "-j REJECT --reject-with icmp-port-unreachable";

/// Berth's chains and their rules for the sessions' bridge interfaces, each
/// line as `iptables -S <chain>` prints it (so what is read back compares
/// line for line).
pub fn chain_rules(bridges: &[String]) -> Vec<(&'static str, Vec<String>)> {
    let mut input = vec![];
    let mut forward = vec![];
    for bridge in bridges {
        // Answers to connections the host opened (readiness, the proxy) and
        // to clients of published ports still flow back.
        input.push(format!(
            "-A {INPUT_CHAIN} -i {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        ));
        input.push(format!("-A {INPUT_CHAIN} -i {bridge} {REJECT}"));
        forward.push(format!(
            "-A {FORWARD_CHAIN} -d {METADATA_RANGE} -i {bridge} {REJECT}"
        ));
        // Whatever Docker's inter-container setting for the bridge.
        forward.push(format!(
            "-A {FORWARD_CHAIN} -i {bridge} -o {bridge} {REJECT}"
        ));
    }
    vec![(INPUT_CHAIN, input), (FORWARD_CHAIN, forward)]
}

/// The built-in chains that jump to Berth's (first, so nothing before them
/// accepts a session's packet).
const JUMPS: [(&str, &str); 2] = [("INPUT", INPUT_CHAIN), ("DOCKER-USER", FORWARD_CHAIN)];

/// `iptables-restore --noflush` input: declaring a chain empties it, so the
/// whole rule set is replaced in one transaction.
pub fn restore_script(bridges: &[String]) -> String {
    let mut script = String::from("*filter\n");
    for (chain, _) in chain_rules(bridges) {
        script.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for (_, rules) in chain_rules(bridges) {
        for rule in rules {
            script.push_str(&rule);
            script.push('\n');
        }
    }
    script.push_str("COMMIT\n");
    script
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "Docker network {name}: {source}; check that the Docker daemon runs and accepts API calls"
    )]
    Docker {
        name: &'static str,
        #[source]
        source: BollardError,
    },
    #[error("Docker network {name} exists but {why}; remove it (docker network rm {name}) so host-service creates it as sessions need")]
    Misconfigured { name: &'static str, why: String },
    #[error("Docker's default bridge network is {why}; sessions with open egress join it, so run dockerd with its default bridge (no \"bridge\": \"none\" in daemon.json)")]
    NoDefaultBridge { why: String },
    #[error("bridged traffic bypasses the packet filter ({why}); host-service needs the br_netfilter module and net.bridge.bridge-nf-call-iptables=1 to keep sessions on one bridge apart")]
    BridgeFilter { why: String },
    #[error("running `{command}` failed: {why}; host-service needs iptables (Debian package iptables) and root to keep sessions off the host and the metadata endpoint")]
    Iptables { command: String, why: String },
    #[error("the installed {chain} rules differ from what was written (another program changes them?); found:\n{found}")]
    Unverified { chain: &'static str, found: String },
}

const IPTABLES_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates the session networks (or checks the existing ones), installs the
/// filter rules and reads them back. Returns the rules as installed, which
/// the daemon logs.
pub async fn install(docker: &DockerEngine) -> Result<Vec<String>, IsolationError> {
    let mut bridges = vec![];
    for network in NETWORKS {
        bridges.push(ensure_network(docker, network).await?);
    }
    filter_bridged_traffic().await?;
    iptables(&["-w", "10", "-t", "filter", "-S", "DOCKER-USER"], None)
        .await
        .map_err(|e| match e {
            IsolationError::Iptables { command, why } => IsolationError::Iptables {
                command,
                why: format!("{why} (Docker creates DOCKER-USER when it manages iptables; is dockerd running with --iptables=false?)"),
            },
            other => other,
        })?;
    iptables(&["-w", "10", "--noflush"], Some(restore_script(&bridges))).await?;
    for (parent, chain) in JUMPS {
        let jump = ["-w", "10", "-t", "filter", "-C", parent, "-j", chain];
        if iptables(&jump, None).await.is_err() {
            iptables(
                &["-w", "10", "-t", "filter", "-I", parent, "1", "-j", chain],
                None,
            )
            .await?;
        }
    }
    let mut installed = vec![];
    for (chain, expected) in chain_rules(&bridges) {
        let listed = iptables(&["-w", "10", "-t", "filter", "-S", chain], None).await?;
        let found: Vec<String> = listed
            .lines()
            .filter(|line| line.starts_with("-A "))
            .map(str::to_owned)
            .collect();
        if found != expected {
            return Err(IsolationError::Unverified {
                chain,
                found: found.join("\n"),
            });
        }
        installed.extend(found);
    }
    for (parent, chain) in JUMPS {
        installed.push(format!("-I {parent} 1 -j {chain}"));
    }
    Ok(installed)
}

/// The network's bridge interface, once the network is there as sessions
/// need it (created if it is Berth's own and missing).
async fn ensure_network(
    docker: &DockerEngine,
    network: &'static SessionNetwork,
) -> Result<String, IsolationError> {
    let api = docker.api();
    let failed = |source| IsolationError::Docker {
        name: network.name,
        source,
    };
    let found = api
        .inspect_network(network.name, None::<InspectNetworkOptions>)
        .await;
    let Some(bridge) = network.bridge else {
        return match found {
            Ok(found) => default_bridge(&found),
            Err(e) if is_not_found(&e) => Err(IsolationError::NoDefaultBridge {
                why: "missing".to_owned(),
            }),
            Err(e) => Err(failed(e)),
        };
    };
    match found {
        Ok(found) => return check_network(network, bridge, &found),
        Err(e) if !is_not_found(&e) => return Err(failed(e)),
        Err(_) => {}
    }
    let options = HashMap::from([
        (
            "com.docker.network.bridge.name".to_owned(),
            bridge.to_owned(),
        ),
        (
            "com.docker.network.bridge.enable_icc".to_owned(),
            "false".to_owned(),
        ),
    ]);
    let request = NetworkCreateRequest {
        name: network.name.to_owned(),
        driver: Some("bridge".to_owned()),
        internal: Some(network.internal),
        options: Some(options),
        labels: Some(HashMap::from([(
            "berth.managed".to_owned(),
            "true".to_owned(),
        )])),
        ..Default::default()
    };
    match api.create_network(request).await {
        Ok(_) => Ok(bridge.to_owned()),
        // Another daemon on this machine may have created it first (Docker
        // refuses the second network on the same bridge name): use theirs.
        Err(e) => match api
            .inspect_network(network.name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(found) => check_network(network, bridge, &found),
            Err(_) => Err(failed(e)),
        },
    }
}

/// The default bridge's interface (docker0 unless dockerd was told otherwise).
fn default_bridge(found: &bollard::models::Network) -> Result<String, IsolationError> {
    let options = found.options.clone().unwrap_or_default();
    let option = |key: &str| options.get(key).map(String::as_str);
    let why = if found.driver.as_deref() != Some("bridge") {
        format!("of driver {:?}, not bridge", found.driver)
    } else if option("com.docker.network.bridge.default_bridge") != Some("true") {
        "not the default bridge".to_owned()
    } else if found.internal.unwrap_or(false) {
        "internal (no route out)".to_owned()
    } else {
        return Ok(option("com.docker.network.bridge.name")
            .unwrap_or("docker0")
            .to_owned());
    };
    Err(IsolationError::NoDefaultBridge { why })
}

fn check_network(
    network: &'static SessionNetwork,
    bridge: &str,
    found: &bollard::models::Network,
) -> Result<String, IsolationError> {
    let options = found.options.clone().unwrap_or_default();
    let option = |key: &str| options.get(key).map(String::as_str);
    let why = if found.driver.as_deref() != Some("bridge") {
        Some(format!("its driver is {:?}, not bridge", found.driver))
    } else if option("com.docker.network.bridge.enable_icc") != Some("false") {
        Some("inter-container traffic is on".to_owned())
    } else if option("com.docker.network.bridge.name") != Some(bridge) {
        Some(format!("its bridge is not {bridge}"))
    } else if found.internal.unwrap_or(false) != network.internal {
        Some(format!("its internal flag is not {}", network.internal))
    } else {
        None
    };
    match why {
        Some(why) => Err(IsolationError::Misconfigured {
            name: network.name,
            why,
        }),
        None => Ok(bridge.to_owned()),
    }
}

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Traffic between two containers on one bridge is switched, not routed: the
/// FORWARD rules see it only while the kernel hands bridged packets to
/// iptables. Docker turns that on when it manages iptables; this makes sure.
async fn filter_bridged_traffic() -> Result<(), IsolationError> {
    let failed = |why: String| IsolationError::BridgeFilter { why };
    if tokio::fs::metadata(BRIDGE_NF_CALL_IPTABLES).await.is_err() {
        let mut modprobe = Command::new("modprobe");
        modprobe.arg("br_netfilter").kill_on_drop(true);
        let loaded = tokio::time::timeout(IPTABLES_TIMEOUT, modprobe.status()).await;
        if !matches!(loaded, Ok(Ok(status)) if status.success()) {
            return Err(failed("modprobe br_netfilter failed".to_owned()));
        }
    }
    let current = tokio::fs::read_to_string(BRIDGE_NF_CALL_IPTABLES)
        .await
        .map_err(|e| failed(format!("reading {BRIDGE_NF_CALL_IPTABLES}: {e}")))?;
    if current.trim() != "1" {
        tokio::fs::write(BRIDGE_NF_CALL_IPTABLES, "1")
            .await
            .map_err(|e| failed(format!("writing 1 to {BRIDGE_NF_CALL_IPTABLES}: {e}")))?;
    }
    Ok(())
}

/// Runs `iptables` (or `iptables-restore` when `stdin` is given), bounded;
/// its standard output.
async fn iptables(args: &[&str], stdin: Option<String>) -> Result<String, IsolationError> {
    let program = if stdin.is_some() {
        "iptables-restore"
    } else {
        "iptables"
    };
    let command_line = format!("{program} {}", args.join(" "));
    let failed = |why: String| IsolationError::Iptables {
        command: command_line.clone(),
        why,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let run = async {
        let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
        if let Some(mut pipe) = child.stdin.take() {
            if let Some(input) = &stdin {
                pipe.write_all(input.as_bytes())
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| failed(e.to_string()))
    };
    let output = tokio::time::timeout(IPTABLES_TIMEOUT, run)
        .await
        .map_err(|_| failed(format!("no answer within {IPTABLES_TIMEOUT:?}")))??;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_bridge_is_kept_from_the_host_other_sessions_and_the_metadata_range() {
        let bridges = ["docker0".to_owned(), "berth-sealed0".to_owned()];
        let rules = chain_rules(&bridges);
        let all: Vec<&String> = rules.iter().flat_map(|(_, r)| r).collect();
        for bridge in &bridges {
            assert!(all.contains(&&format!(
                "-A BERTH-FORWARD -d 169.254.0.0/16 -i {bridge} -j REJECT --reject-with icmp-port-unreachable"
            )));
            assert!(all.contains(&&format!(
                "-A BERTH-FORWARD -i {bridge} -o {bridge} -j REJECT --reject-with icmp-port-unreachable"
            )));
            assert!(all.contains(&&format!(
                "-A BERTH-INPUT -i {bridge} -j REJECT --reject-with icmp-port-unreachable"
            )));
        }
        // The metadata endpoint lies in the rejected range.
        let metadata: std::net::Ipv4Addr = "169.254.169.254".parse().unwrap();
        assert_eq!(metadata.octets()[..2], [169, 254]);
        // Each chain is declared (so emptied) before its rules: a rerun replaces.
        let script = restore_script(&bridges);
        assert!(script.starts_with("*filter\n:BERTH-INPUT - [0:0]\n:BERTH-FORWARD - [0:0]\n"));
        assert!(script.ends_with("COMMIT\n"));
        assert_eq!(
            script.lines().filter(|l| l.starts_with("-A ")).count(),
            all.len()
        );
    }

    #[test]
    fn egress_picks_the_network() {
        assert_eq!(Egress::Open.network().name, "bridge");
        assert!(Egress::None.network().internal);
        assert_eq!(Egress::default(), Egress::Open);
    }
}
