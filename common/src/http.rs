//! HTTP pieces both services' APIs share: typed JSON errors
//! (`{"error": {"code": "…", "message": "…"}}` with a fitting status), JSON
//! and text responses, and bounded body reading.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

pub type HttpResponse = Response<Full<Bytes>>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body that is whole or streamed (server-sent events, bodies the
/// gateway forwards, which can fail midway).
pub type StreamingBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A whole response as a [`StreamingBody`] one.
pub fn streaming(response: HttpResponse) -> Response<StreamingBody> {
    response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The `Allow` header of a 405: the methods the path accepts.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }
    /// 405 for a path that exists; `allow` lists its methods, e.g. `"GET, DELETE"`,
    /// and is sent as the `Allow` header (RFC 9110 requires it on a 405).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("this path accepts only {allow}"),
            )
        }
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "send the session token as `Authorization: Bearer <token>`",
        )
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "this token does not grant access to that session",
        )
    }
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such endpoint; see /openapi.json",
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn into_response(self) -> HttpResponse {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = json(self.status, &body);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        // The body was not read to its end: this connection cannot carry
        // another request, and a client that reused it would see it cut.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

pub fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Reads a request body within `limit` bytes and `timeout` (a slow client
/// cannot hold a handler forever): 413, 408 or 400 otherwise.
pub async fn read_body<B>(
    req: Request<B>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "reading the body failed: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the body did not arrive in time",
        )),
    }
}

/// The bearer token of a request, or 401.
pub fn bearer<B>(req: &Request<B>) -> Result<String, ApiError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token)
        .map(str::to_owned)
        .ok_or_else(ApiError::unauthorized)
}

/// The Upgrade header when the client asks for one (`Connection: upgrade`).
pub fn requested_upgrade(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
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
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| http::HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
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

/// The value of cookie `name` in a request's Cookie headers.
pub fn find_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    cookie_pairs(headers)
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// Removes cookie `name` (and only it) before a request goes on to an app.
pub fn remove_cookie(headers: &mut http::HeaderMap, name: &str) {
    let kept: Vec<String> = cookie_pairs(headers)
        .filter(|(n, _)| *n != name)
        .map(|(n, value)| format!("{n}={value}"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = http::HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
}

fn cookie_pairs(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// How a listener keeps clients that connect and say nothing, or too many
/// clients at once, from using it up.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// The first byte of a request (after the TLS handshake, if any) and then
    /// its headers must each arrive within this.
    pub header_timeout: Duration,
    /// Connections served at once; past it a client is refused at once with a
    /// 503 (TOO_MANY_CONNECTIONS) and the connection closed.
    pub max_connections: usize,
}

/// The answer past the connection cap, written raw: no HTTP machinery is
/// spent on a connection that is not served.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 102\r\n\r\n{\"error\": {\"code\": \"TOO_MANY_CONNECTIONS\", \"message\": \"the server is at its connection limit; retry\"}}";

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on `listener` until `stop`
/// (responses are whole, or streamed for the host's proxy):
/// `accept` turns each TCP connection into the stream to speak HTTP on (a TLS
/// handshake for the host API, nothing for the scaler) and runs in the
/// connection's own task, so a slow client never stalls accepting. Within
/// `limits`, the first byte and then the headers must arrive in time (hyper's
/// own header timer starts only once a byte has come); in-flight requests get
/// 5 s when stopping.
/// The TCP peer of a request (a request extension `serve` sets): the client,
/// or the proxy in front of it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The peer address of a request `serve` accepted, as text.
pub fn peer_address<B>(req: &Request<B>) -> Option<String> {
    req.extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip().to_string())
}

pub async fn serve<A, AFut, IO, H, HFut, B>(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
    limits: ConnectionLimits,
    accept: A,
    handler: H,
) where
    A: Fn(tokio::net::TcpStream) -> AFut + Clone + Send + 'static,
    AFut: std::future::Future<Output = Option<IO>> + Send,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<hyper::body::Incoming>) -> HFut + Clone + Send + Sync + 'static,
    HFut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_timeout = limits.header_timeout;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: pause instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = limits.max_connections,
                "at the connection limit; refusing a connection"
            );
            tokio::spawn(refuse(tcp));
            continue;
        };
        let (accept, handler, builder) = (accept.clone(), handler.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(io) = accept(tcp).await else { return };
            let io = FirstByteDeadline::new(io, header_timeout);
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    let response = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the shutdown grace");
    }
}

async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(TOO_MANY_CONNECTIONS).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// A stream whose reads fail with `TimedOut` if its first byte has not come
/// by the deadline. hyper's header timeout starts only when a request's first
/// byte arrives (its HTTP version sniffing waits unbounded before that), so a
/// client that connects, completes TLS and sends nothing would hold its
/// connection forever.
struct FirstByteDeadline<IO> {
    io: IO,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> FirstByteDeadline<IO> {
    fn new(io: IO, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn a_refused_oversized_body_closes_its_connection() {
        let big = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", "x");
        assert_eq!(big.into_response().headers()[header::CONNECTION], "close");
        let other = ApiError::bad_request("x").into_response();
        assert!(other.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::ACCEPT, "*/*".parse().unwrap());
        assert!(requested_upgrade(&headers).is_none());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        ws.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(requested_upgrade(&ws).unwrap(), "websocket");
    }
}
