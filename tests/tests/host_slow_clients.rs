//! Slow and stalled clients (slowloris): a TLS handshake that never comes,
//! headers that never finish, a body that stops halfway. Each is cut off
//! after its timeout, none of them stalls other clients, and none changes
//! the session it named.

#[path = "host_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use support::*;

const TIMEOUT_S: u64 = 1;

async fn tls(th: &TestHost) -> TlsStream<TcpStream> {
    let config = berth_common::tls::pinned_client_config(&th.cert_sha256).unwrap();
    let tcp = TcpStream::connect(th.api).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (bounded): what it said
/// and how long it took.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (String, Duration) {
    let started = Instant::now();
    let mut said = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => said.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the server kept a stalled connection open for 10 s"),
        }
    }
    (
        String::from_utf8_lossy(&said).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_without_blocking_anyone_or_changing_anything() {
    let timeout = TIMEOUT_S.to_string();
    let (db, th) = warm_host(
        1,
        &[
            "--header-timeout-secs",
            &timeout,
            "--body-timeout-secs",
            &timeout,
        ],
    )
    .await;
    let (id, token) = allocate(&db.pool, &th.host_id, "slow-user").await;
    eventually("the claim", Duration::from_secs(10), || async {
        session_status(&db.pool, id).await.as_deref() == Some("CONNECTING")
    })
    .await;

    // 10 connections that never start TLS, 20 that never finish their headers.
    let mut no_handshake = Vec::new();
    for _ in 0..10 {
        no_handshake.push(TcpStream::connect(th.api).await.unwrap());
    }
    let mut slowloris = Vec::new();
    for _ in 0..20 {
        let mut stream = tls(&th).await;
        stream
            .write_all(b"PUT /json_transport HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        slowloris.push(stream);
    }
    // And one that sends its headers and then only part of its body.
    let mut slow_body = tls(&th).await;
    let partial = format!(
        "PUT /json_transport HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{{\"session_id\": \"{id}\", \"json_da"
    );
    slow_body.write_all(partial.as_bytes()).await.unwrap();
    slow_body.flush().await.unwrap();

    // Meanwhile everyone else is served at once.
    let started = Instant::now();
    let health = th.client().get(th.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(TIMEOUT_S),
        "served while 31 clients stall"
    );

    // The slow body gets a 408 after its timeout, not before.
    let (answer, took) = until_closed(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(
        took >= Duration::from_millis(TIMEOUT_S * 1000 - 200),
        "cut after {took:?}"
    );
    // Stalled headers and handshakes are closed within a few timeouts.
    for mut stream in slowloris {
        let (_, took) = until_closed(&mut stream).await;
        assert!(
            took < Duration::from_secs(5 * TIMEOUT_S),
            "headers stalled {took:?}"
        );
    }
    for mut stream in no_handshake {
        let (_, took) = until_closed(&mut stream).await;
        assert!(
            took < Duration::from_secs(5 * TIMEOUT_S),
            "handshake stalled {took:?}"
        );
    }

    // Nothing changed: the session still waits for its client, no config.json.
    assert_eq!(
        session_status(&db.pool, id).await.as_deref(),
        Some("CONNECTING")
    );
    let config = th
        .state_dir
        .join("sessions")
        .join(id.to_string())
        .join("config.json");
    assert!(!config.exists());
    // And its real client is served normally.
    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(response.status(), 200);
    th.cleanup().await;
}
