//! Forwarding a browser's request to the session's host proxy
//! (`/sessions/<id>/proxy/<port>/…`) over TLS pinned to the host's
//! certificate, with an access grant in place of the user's credentials.
//! Requests share one HTTP/2 connection per host; a WebSocket (or any
//! upgrade) gets its own HTTP/1.1 connection and is tunnelled byte for byte.
//! Bodies stream both ways under HTTP/2 flow control, so memory stays
//! bounded whatever their size.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_common::grant::GRANT_HEADER;
use berth_common::http::{ApiError, BoxError, StreamingBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::route::HostTarget;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An app gets this long to start answering (as on the host's own proxy).
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The gateway's connections to hosts.
#[derive(Default)]
pub struct HostConnections {
    shared: Mutex<HashMap<HostTarget, http2::SendRequest<StreamingBody>>>,
}

impl std::fmt::Debug for HostConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.shared.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("HostConnections")
            .field("open", &open)
            .finish()
    }
}

/// Byte counters of one forwarded exchange.
#[derive(Clone, Debug)]
pub struct Traffic {
    pub up: Counter,
    pub down: Counter,
}

fn unreachable(target: &HostTarget, why: impl std::fmt::Display) -> ApiError {
    tracing::debug!(host = %target.addr, %why, "gateway: host unreachable");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "HOST_UNREACHABLE",
        "the session's host did not answer; retry, or ask the scheduler for the session's state",
    )
}

async fn tls_connect(
    target: &HostTarget,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ApiError> {
    let mut config = berth_common::tls::pinned_client_config(&target.cert_sha256)
        .map_err(|e| unreachable(target, e))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
        .await
        .map_err(|_| unreachable(target, "connect timed out"))?
        .map_err(|e| unreachable(target, e))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(target.addr.ip().into());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| unreachable(target, "TLS handshake timed out"))?
        .map_err(|e| unreachable(target, e))
}

impl HostConnections {
    /// The host's shared HTTP/2 connection, opened when there is none.
    async fn shared(
        &self,
        target: &HostTarget,
    ) -> Result<http2::SendRequest<StreamingBody>, ApiError> {
        if let Some(sender) = self.lock().get(target).filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let tls = tls_connect(target, b"h2").await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(2 << 20)
            .initial_connection_window_size(8 << 20)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(target, e))?;
        let addr = target.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(host = %addr, %error, "gateway: host connection ended");
            }
        });
        self.lock().insert(target.clone(), sender.clone());
        Ok(sender)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<HostTarget, http2::SendRequest<StreamingBody>>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `request` (its URI `/sessions/<id>/proxy/<port>/…`) to the host.
    /// `authority` is the session hostname the browser used: the app sees it.
    pub async fn send(
        &self,
        target: &HostTarget,
        authority: &str,
        mut request: Request<Incoming>,
        upstream_path: &str,
        grant: &str,
        traffic: Traffic,
        upgrades: &Counter,
    ) -> Result<Response<StreamingBody>, ApiError> {
        let upgrade = requested_upgrade(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        super::login::strip_cookie(&mut headers);
        headers.remove(GRANT_HEADER);
        headers.insert(
            HeaderName::from_static(GRANT_HEADER),
            HeaderValue::from_str(grant).map_err(|_| ApiError::bad_request("bad grant"))?,
        );
        let host_header = HeaderValue::from_str(authority)
            .map_err(|_| ApiError::bad_request("the Host header cannot be forwarded"))?;
        let body = Counted::new(body, traffic.up.clone())
            .map_err(BoxError::from)
            .boxed_unsync();

        let response = if let (Some(upgrade), Some(client_upgrade)) = (upgrade, client_upgrade) {
            headers.insert(header::HOST, host_header);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, upgrade);
            let mut upstream = Request::new(body);
            *upstream.method_mut() = parts.method;
            *upstream.uri_mut() = upstream_path
                .parse()
                .map_err(|_| ApiError::bad_request("the path cannot be forwarded"))?;
            *upstream.headers_mut() = headers;
            let tls = tls_connect(target, b"http/1.1").await?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(target, e))?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            let mut response = answer(target, sender.send_request(upstream)).await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                upgrades.inc();
                let host_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(client_upgrade, host_upgrade, traffic));
                let (parts, _) = response.into_parts();
                return Ok(Response::from_parts(
                    parts,
                    Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                ));
            }
            response
        } else {
            headers.remove(header::HOST);
            let mut upstream = Request::new(body);
            *upstream.method_mut() = parts.method;
            *upstream.version_mut() = Version::HTTP_2;
            *upstream.uri_mut() = Uri::builder()
                .scheme("https")
                .authority(authority)
                .path_and_query(upstream_path)
                .build()
                .map_err(|_| ApiError::bad_request("the path cannot be forwarded"))?;
            *upstream.headers_mut() = headers;
            let mut sender = self.shared(target).await?;
            let sent = sender.send_request(upstream);
            match answer(target, sent).await {
                Ok(response) => response,
                Err(error) => {
                    // A broken shared connection is opened anew next time.
                    self.lock().remove(target);
                    return Err(error);
                }
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            Counted::new(body, traffic.down)
                .map_err(BoxError::from)
                .boxed_unsync(),
        ))
    }
}

async fn answer(
    target: &HostTarget,
    sent: impl std::future::Future<Output = hyper::Result<Response<Incoming>>>,
) -> Result<Response<Incoming>, ApiError> {
    tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, sent)
        .await
        .map_err(|_| unreachable(target, "no answer in time"))?
        .map_err(|e| unreachable(target, e))
}

/// The Upgrade header when the client asks for one (`Connection: upgrade`).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Copies bytes both ways between the upgraded browser and host connections.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    host: hyper::upgrade::OnUpgrade,
    traffic: Traffic,
) {
    let (client, host) = match tokio::try_join!(client, host) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "gateway: upgrade failed");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (host_read, host_write) = tokio::io::split(TokioIo::new(host));
    tokio::join!(
        pump(client_read, host_write, &traffic.up),
        pump(host_read, client_write, &traffic.down)
    );
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, bytes: &Counter) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.inc_by(n as u64);
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// A body that counts the bytes passing through it.
struct Counted<B> {
    inner: B,
    bytes: Counter,
}

impl<B> Counted<B> {
    fn new(inner: B, bytes: Counter) -> Self {
        Self { inner, bytes }
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
