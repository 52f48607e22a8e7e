//! A pinned client accepts exactly the host's certificate.

use std::sync::Arc;

use berth_common::tls::{self, HostIdentity};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

async fn serve_once(identity: &HostIdentity) -> std::net::SocketAddr {
    let acceptor = TlsAcceptor::from(Arc::new(identity.server_config().unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"hello").await;
                let _ = tls.shutdown().await;
            }
        }
    });
    addr
}

async fn connect(addr: std::net::SocketAddr, pin: &str) -> Result<String, std::io::Error> {
    let connector = TlsConnector::from(Arc::new(tls::pinned_client_config(pin).unwrap()));
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from("berth-host").unwrap(), tcp)
        .await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn pinned_client_accepts_the_host_and_rejects_any_other_pin() {
    tls::install_crypto_provider();
    let identity = HostIdentity::generate(&["127.0.0.1".to_owned()]).unwrap();
    let addr = serve_once(&identity).await;
    assert_eq!(connect(addr, &identity.sha256_hex).await.unwrap(), "hello");

    let other = HostIdentity::generate(&["127.0.0.1".to_owned()]).unwrap();
    let err = connect(addr, &other.sha256_hex).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match the pinned"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_with_ordinary_web_pki_trust_rejects_the_self_signed_host() {
    tls::install_crypto_provider();
    let identity = HostIdentity::generate(&["127.0.0.1".to_owned()]).unwrap();
    let addr = serve_once(&identity).await;
    // An unpinned client with an empty trust store stands for any client that
    // did not get the fingerprint from the scaler.
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await;
    assert!(
        result.is_err(),
        "an unpinned client must not accept the host's certificate"
    );
}
