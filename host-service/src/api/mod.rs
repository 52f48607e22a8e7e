//! The host API over HTTPS only: json_transport, per-session status and
//! delete, health, readiness, metrics and the OpenAPI document.
//!
//! Accepting is never blocked by a client: each connection's TLS handshake
//! runs in its own task with a deadline, headers must arrive in time, and
//! bodies are bounded in size and time.

mod routes;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use berth_common::http::ApiError;
pub use routes::parse_json_transport;

use crate::host::Host;

pub async fn serve(host: Arc<Host>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    // The TLS handshake and then the headers each get this long.
    let header_timeout = Duration::from_secs(host.config.header_timeout_secs);
    let handshake = move |tcp: tokio::net::TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let peer = tcp.peer_addr().ok();
            match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(error)) => {
                    tracing::debug!(?peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake timed out");
                    None
                }
            }
        }
    };
    let stop = host.stop.clone();
    let max_connections = host.config.common.max_connections as usize;
    let handler = move |req| routes::handle(host.clone(), req);
    let limits = berth_common::http::ConnectionLimits {
        header_timeout,
        max_connections,
    };
    berth_common::http::serve(listener, stop, limits, handshake, handler).await;
}
