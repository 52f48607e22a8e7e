//! The IMDSv2 client against a loopback IMDSv2 server that requires tokens.

use std::net::SocketAddr;
use std::time::Duration;

use berth_common::imds::server::{instance_values, ImdsServer};
use berth_common::imds::{ImdsClient, ImdsError};

async fn server() -> ImdsServer {
    let values = instance_values(
        "i-0123456789abcdef0",
        "g4dn.xlarge",
        "us-east-1",
        "ami-0abc",
        "203.0.113.7",
    );
    ImdsServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), values)
        .await
        .unwrap()
}

#[tokio::test]
async fn reads_the_identity_with_one_token() {
    let imds = server().await;
    let client = ImdsClient::new(&imds.endpoint()).unwrap();
    let id = client.identity().await.unwrap();
    assert_eq!(id.instance_id.as_str(), "i-0123456789abcdef0");
    assert_eq!(id.instance_type, "g4dn.xlarge");
    assert_eq!(id.region, "us-east-1");
    assert_eq!(id.ami_id, "ami-0abc");
    assert_eq!(id.public_ipv4, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(imds.token_requests(), 1, "the token is cached across calls");
    assert_eq!(
        imds.rejected_requests(),
        0,
        "no request went out without a token"
    );
}

#[tokio::test]
async fn missing_items_are_none_and_missing_identity_is_a_clear_error() {
    let imds = server().await;
    imds.set_value("/latest/meta-data/public-ipv4", None);
    let client = ImdsClient::new(&imds.endpoint()).unwrap();
    assert_eq!(
        client.get("/latest/meta-data/nothing-here").await.unwrap(),
        None
    );
    assert_eq!(client.identity().await.unwrap().public_ipv4, None);
    imds.set_value("/latest/meta-data/instance-id", None);
    let err = client.identity().await.unwrap_err();
    assert!(matches!(err, ImdsError::Missing { .. }), "{err}");
    imds.set_value("/latest/meta-data/instance-id", Some("../../etc"));
    assert!(matches!(
        client.identity().await.unwrap_err(),
        ImdsError::Invalid { .. }
    ));
}

#[tokio::test]
async fn refetches_the_token_on_401() {
    let imds = server().await;
    let client = ImdsClient::new(&imds.endpoint()).unwrap();
    client
        .get("/latest/meta-data/instance-id")
        .await
        .unwrap()
        .unwrap();
    imds.expire_all_tokens();
    let id = client.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(imds.token_requests(), 2);
    assert_eq!(
        imds.rejected_requests(),
        1,
        "one 401, then success with a fresh token"
    );
}

#[tokio::test]
async fn honours_the_token_ttl() {
    let imds = server().await;
    let client = ImdsClient::new(&imds.endpoint())
        .unwrap()
        .with_token_ttl(Duration::from_secs(1));
    client.get("/latest/meta-data/instance-id").await.unwrap();
    client.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(imds.token_requests(), 1, "a live token is reused");
    // The client refreshes before the server would expire the token, so no
    // request is ever rejected.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    client.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(imds.token_requests(), 2, "an aged token is replaced");
    assert_eq!(imds.rejected_requests(), 0);
}

#[tokio::test]
async fn refuses_to_work_without_a_token() {
    // An IMDSv1-only endpoint: GETs answer, token PUTs do not.
    let v1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = v1.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = v1.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let put = buf[..n].starts_with(b"PUT");
            let answer: &[u8] = if put {
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ni-v1v1"
            };
            let _ = s.write_all(answer).await;
        }
    });
    let client = ImdsClient::new(&format!("http://{addr}")).unwrap();
    let err = client.identity().await.unwrap_err();
    assert!(
        matches!(err, ImdsError::TokenRefused { status: 403, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_metadata_fails_in_bounded_time() {
    // Nothing listens here; the client must give up, not hang.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = ImdsClient::new(&format!("http://{dead}")).unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), client.identity())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ImdsError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        ImdsClient::new("https://example.com").is_err(),
        "only plain http link-local style endpoints"
    );
}
