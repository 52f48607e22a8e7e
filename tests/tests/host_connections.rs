//! Clients that connect and say nothing, and more clients than the daemon
//! serves at once: the first are cut off within the header timeout (also after
//! a completed TLS handshake), the second refused at once; others are served.

#[path = "host_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_common::tls;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn connector(pin: &str) -> TlsConnector {
    TlsConnector::from(Arc::new(tls::pinned_client_config(pin).unwrap()))
}

async fn silent_tls(
    addr: std::net::SocketAddr,
    connector: TlsConnector,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    connector.connect(name, tcp).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_tls_clients_are_cut_off_and_others_are_served() {
    const CLIENTS: usize = 2000;
    let header_timeout = Duration::from_secs(2);
    let (_db, th) = warm_host(1, &["--header-timeout-secs", "2"]).await;
    let connector = connector(&th.cert_sha256);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(64));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (connector, handshakes, addr) = (connector.clone(), handshakes.clone(), th.api);
        clients.spawn(async move {
            let permit = handshakes.acquire_owned().await.ok()?;
            let mut tls = silent_tls(addr, connector).await?;
            drop(permit);
            let established = Instant::now();
            // Say nothing; the daemon must end the connection.
            let mut buf = [0u8; 64];
            let ended = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            ended.ok().map(|()| established.elapsed())
        });
    }
    // Meanwhile a normal client is served.
    let healthz = th.client().get(th.url("/healthz")).send().await.unwrap();
    assert_eq!(
        healthz.status(),
        200,
        "a normal client is served among the silent ones"
    );

    let mut slowest = Duration::ZERO;
    let mut cut_off = 0;
    while let Some(joined) = clients.join_next().await {
        let held = joined
            .unwrap()
            .expect("a silent client was never cut off (or never connected)");
        slowest = slowest.max(held);
        cut_off += 1;
    }
    eprintln!("{cut_off} silent TLS clients cut off; the longest held its connection {slowest:?}");
    assert_eq!(cut_off, CLIENTS);
    assert!(
        slowest < header_timeout + Duration::from_secs(2),
        "a silent client held its connection for {slowest:?}"
    );
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_client_is_refused_at_once() {
    let (_db, th) = warm_host(1, &["--max-connections", "20"]).await;
    let connector = connector(&th.cert_sha256);
    let mut held = vec![];
    for _ in 0..20 {
        held.push(
            silent_tls(th.api, connector.clone())
                .await
                .expect("a connection under the cap"),
        );
    }
    // The 21st: answered and closed at once, not left hanging.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(th.api).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the refused connection was left hanging")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("TOO_MANY_CONNECTIONS"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Once the held connections go, clients are served again.
    drop(held);
    eventually(
        "a client to be served again",
        Duration::from_secs(10),
        || async {
            th.client()
                .get(th.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    th.cleanup().await;
}
