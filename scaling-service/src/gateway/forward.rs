//! Forwarding a browser's request to the session's host proxy
//! (`/sessions/<id>/proxy/<port>/…`) over TLS pinned to the host's
//! certificate, with an access grant in place of the user's credentials.
//! Requests share one HTTP/2 connection per host; a WebSocket (or any
//! upgrade) gets its own HTTP/1.1 connection and is tunnelled byte for byte.
//! Bodies stream both ways under HTTP/2 flow control, so memory stays
//! bounded whatever their size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_common::grant::GRANT_HEADER;
use berth_common::http::{requested_upgrade, strip_hop_by_hop, ApiError, BoxError, StreamingBody};
use berth_common::relay::{tunnel, Observed};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
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

/// The gateway's counters one forwarded exchange adds to.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Bytes to the app.
    pub up: Counter,
    /// Bytes from the app.
    pub down: Counter,
    pub upgrades: Counter,
}

/// Where a request goes and what it carries there.
#[derive(Debug)]
pub struct Destination<'a> {
    pub host: &'a HostTarget,
    /// The session hostname the browser used: the app sees it as its host.
    pub authority: &'a str,
    /// `/sessions/<id>/proxy/<port>/…` on the host.
    pub path: &'a str,
    pub grant: &'a str,
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
    let mut config = berth_common::tls::pinned_client_config_with(
        &target.cert_sha256,
        berth_common::tls::bulk_provider(),
    )
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
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            // Fewer, larger DATA frames from the host: less framing per byte.
            .max_frame_size(1 << 20)
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
        let mut shared = self.lock();
        // Connections to hosts that went away are not kept.
        shared.retain(|_, sender| !sender.is_closed());
        shared.insert(target.clone(), sender.clone());
        Ok(sender)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<HostTarget, http2::SendRequest<StreamingBody>>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the browser's `request` on to its destination.
    pub async fn send(
        &self,
        to: Destination<'_>,
        mut request: Request<Incoming>,
        traffic: Traffic,
    ) -> Result<Response<StreamingBody>, ApiError> {
        let Destination {
            host: target,
            authority,
            path: upstream_path,
            grant,
        } = to;
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
        let up = traffic.up.clone();
        let body = Observed::new(body, move |n| {
            up.inc_by(n as u64);
        })
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
                traffic.upgrades.inc();
                let host_upgrade = hyper::upgrade::on(&mut response);
                let Traffic { up, down, .. } = traffic;
                tokio::spawn(tunnel(
                    client_upgrade,
                    host_upgrade,
                    move |n| {
                        up.inc_by(n as u64);
                    },
                    move |n| {
                        down.inc_by(n as u64);
                    },
                ));
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
            Observed::new(body, move |n| {
                traffic.down.inc_by(n as u64);
            })
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
