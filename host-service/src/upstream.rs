//! HTTP/1.1 connections from the daemon into a session's container (the
//! proxy and the init call). One connection per request: containers are on
//! the local bridge, so connecting costs well under a millisecond, and no
//! pool can hand one session's connection to another.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A container that does not accept within this long is not serving.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects and handshakes; the connection (with upgrades, for WebSockets)
/// is driven by a task of its own that ends with it.
pub async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, String>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%addr, %error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
