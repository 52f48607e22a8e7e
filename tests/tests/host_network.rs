//! Probed from inside real session containers: a session reaches no other
//! session, no address of its own host, and with egress `none` nothing at all;
//! the filter rules the daemon installs are there once however often it
//! starts. Traffic goes only to this machine: the project's containers, the
//! host's own addresses and a network namespace the test creates (the
//! metadata address is proven blocked by the installed rule, never probed).

#[path = "host_support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use berth_testing::KillOnDrop;
use support::*;

/// Whether `container` can open a TCP connection to `ip:port` (busybox nc,
/// two seconds).
fn reaches(container: &str, ip: &str, port: u16) -> bool {
    let probe = format!("nc -w 2 {ip} {port} </dev/null >/dev/null 2>&1");
    docker_status(&["exec", container, "sh", "-c", &probe]).0
}

fn container_ip(container: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        container,
    ])
    .trim()
    .to_owned()
}

fn iptables_list(chain: &str) -> String {
    let out = Command::new("iptables")
        .args(["-w", "10", "-S", chain])
        .output()
        .expect("running iptables");
    assert!(out.status.success(), "iptables -S {chain}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every IPv4 address of this machine but loopback (which inside a container
/// is the container's own), plus each session network's gateway.
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let cidr = line.split_whitespace().nth(3)?;
            let ip = cidr.split('/').next()?;
            (!ip.starts_with("127.")).then(|| ip.to_owned())
        })
        .collect()
}

/// A network namespace joined to the host by a veth pair: "the outside" of
/// this machine's sessions, without sending a packet off the machine.
struct Outside {
    namespace: String,
    veth: String,
    address: String,
    _server: KillOnDrop,
}

const OUTSIDE_PORT: u16 = 9000;

impl Outside {
    fn create() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let namespace = format!("berth-out-{tag}");
        let veth = format!("bo{tag}");
        let peer = format!("bp{tag}");
        // A /30 of its own in 10.251.0.0/16, per process, so runs do not collide.
        let net = (std::process::id() % 16000) * 4;
        let (host_ip, ns_ip) = (
            format!("10.251.{}.{}", net / 256, net % 256 + 1),
            format!("10.251.{}.{}", net / 256, net % 256 + 2),
        );
        for args in [
            vec!["netns", "add", &namespace],
            vec!["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &namespace],
            vec!["addr", "add", &format!("{host_ip}/30"), "dev", &veth],
            vec!["link", "set", &veth, "up"],
            vec![
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &peer,
            ],
            vec!["-n", &namespace, "link", "set", &peer, "up"],
            vec!["-n", &namespace, "link", "set", "lo", "up"],
        ] {
            let status = Command::new("ip").args(&args).status().expect("running ip");
            assert!(status.success(), "ip {}", args.join(" "));
        }
        let server = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3", "-m", "http.server"])
            .args([&OUTSIDE_PORT.to_string(), "--bind", &ns_ip])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting a server in the namespace");
        Self {
            namespace,
            veth,
            address: ns_ip,
            _server: KillOnDrop(server),
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

async fn running(db: &TestDb, th: &TestHost, user: &str) -> String {
    let (id, token) = allocate(&db.pool, &th.host_id, user).await;
    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(response.status(), 200, "{user}'s session starts");
    format!("berth-{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reaches_nothing_but_itself_and_the_outside_its_runtime_allows() {
    // Published on every address, as production hosts do, so the ways around
    // the proxy through the host's ports are open to try.
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    let host_id = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let state_dir = std::env::temp_dir().join(format!("berth-state-{host_id}"));
    let mut argv = host_args(&db, &HostArgs::default(), &host_id, &state_dir).await;
    let publish = argv.iter().position(|a| a == "--publish-ip").unwrap();
    argv[publish + 1] = "0.0.0.0".to_owned();
    let th = start_with(argv, host_id, state_dir).await;
    wait_warm(&db, &th, 2).await;
    let a = running(&db, &th, "alice").await;
    let b = running(&db, &th, "bob").await;
    let (ip_a, ip_b) = (container_ip(&a), container_ip(&b));

    assert!(reaches(&a, &ip_a, 8080), "a session reaches its own app");
    assert!(
        !reaches(&a, &ip_b, 8080),
        "session A reached session B's app at its container address"
    );

    // A listener on every address of the host: the host itself connects to
    // each, no session does.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let addresses = host_addresses();
    assert!(
        addresses.len() >= 2,
        "the host has its own and the session bridge's address: {addresses:?}"
    );
    for ip in &addresses {
        assert!(
            std::net::TcpStream::connect((ip.as_str(), port)).is_ok(),
            "the host reaches its own listener on {ip}"
        );
        assert!(
            !reaches(&a, ip, port),
            "a session reached a port bound on the host's address {ip}"
        );
    }
    // B's app through B's host port on a host address, bypassing the proxy.
    let published = docker(&["port", &b, "8080/tcp"]);
    let b_port: u16 = published
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("B's published port: {published:?}"));
    for ip in &addresses {
        assert!(
            std::net::TcpStream::connect((ip.as_str(), b_port)).is_ok(),
            "the host reaches B's published port on {ip}"
        );
        assert!(
            !reaches(&a, ip, b_port),
            "session A reached session B's published port on {ip}"
        );
    }

    let outside = Outside::create();
    eventually("the outside to listen", Duration::from_secs(10), || async {
        std::net::TcpStream::connect((outside.address.as_str(), OUTSIDE_PORT)).is_ok()
    })
    .await;
    assert!(
        reaches(&a, &outside.address, OUTSIDE_PORT),
        "egress open reaches the outside"
    );

    // A runtime with egress none, on a second host of the same machine.
    sqlx::query(
        "INSERT INTO runtimes (name, image, ports, memory_mib, needs_tty, readiness, egress) \
         SELECT 'sealed', image, ports, memory_mib, false, readiness, 'none' FROM runtimes WHERE name = $1",
    )
    .bind(RUNTIME)
    .execute(&db.pool)
    .await
    .unwrap();
    let before = (iptables_list("BERTH-INPUT"), iptables_list("BERTH-FORWARD"));
    let sealed_host = start_host(
        &db,
        HostArgs {
            capacity: 1,
            runtime: "sealed",
            extra: vec![],
        },
    )
    .await;
    wait_warm(&db, &sealed_host, 1).await;
    let s = running(&db, &sealed_host, "carol").await;
    assert!(
        !reaches(&s, &outside.address, OUTSIDE_PORT),
        "egress none reached the outside"
    );
    assert!(
        !reaches(&s, &ip_a, 8080),
        "a sealed session reached another"
    );
    assert!(
        reaches(&s, &container_ip(&s), 8080),
        "it still reaches itself"
    );

    // The rules: the metadata range refused on both bridges; a second daemon
    // start replaced them with the same set and added no second jump.
    let after = (iptables_list("BERTH-INPUT"), iptables_list("BERTH-FORWARD"));
    assert_eq!(before, after, "a restart changed or duplicated the rules");
    let default_bridge = docker(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
    ]);
    for bridge in [default_bridge.trim(), "berth-sealed0"] {
        assert!(after.1.contains(&format!(
            "-A BERTH-FORWARD -d 169.254.0.0/16 -i {bridge} -j REJECT"
        )));
    }
    let jumps = |chain: &str, target: &str| {
        iptables_list(chain)
            .lines()
            .filter(|l| l.ends_with(&format!("-j {target}")))
            .count()
    };
    assert_eq!(jumps("INPUT", "BERTH-INPUT"), 1);
    assert_eq!(jumps("DOCKER-USER", "BERTH-FORWARD"), 1);
    eprintln!("installed rules:\n{}{}", after.0, after.1);

    sealed_host.cleanup().await;
    th.cleanup().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_port_is_published_nowhere_and_served_through_the_proxy() {
    let db = TestDb::new().await;
    add_runtime(&db, RUNTIME, serde_json::json!({}), 10).await;
    sqlx::query(
        "UPDATE runtimes SET ports = '[{\"container_port\": 8080, \"protocol\": \"tcp\", \"exposure\": \"proxy\"}]' WHERE name = $1",
    )
    .bind(RUNTIME)
    .execute(&db.pool)
    .await
    .unwrap();
    let th = start_host(&db, HostArgs::default()).await;
    wait_warm(&db, &th, 2).await;
    let (id, token) = allocate(&db.pool, &th.host_id, "dora").await;
    let response = th.json_transport(&token, id, "{\"hidden\": true}").await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["ports"],
        serde_json::json!([{"container_port": 8080, "protocol": "tcp", "host_port": null, "exposure": "proxy"}])
    );
    let container = format!("berth-{id}");
    assert_eq!(
        docker(&["port", &container]).trim(),
        "",
        "a proxy port is published on no host port"
    );
    let through_proxy = th
        .client()
        .get(th.url(&format!("/sessions/{id}/proxy/8080/config.json")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(through_proxy.status(), 200);
    assert_eq!(through_proxy.text().await.unwrap(), "{\"hidden\": true}");
    th.cleanup().await;
    db.drop_database().await;
}
