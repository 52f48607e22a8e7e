//! Relaying between a client and an app, as the host's proxy and the browser
//! gateway both do: bodies that report every chunk passing through (activity
//! for the idle reaper, bytes for metrics) and tunnels for upgraded
//! connections (WebSockets), copied both ways until both sides are done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A body that calls `seen` with the size of every data chunk it yields.
pub struct Observed<B, F> {
    inner: B,
    seen: F,
}

impl<B, F> std::fmt::Debug for Observed<B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed(..)")
    }
}

impl<B, F: FnMut(usize)> Observed<B, F> {
    pub fn new(inner: B, seen: F) -> Self {
        Self { inner, seen }
    }
}

impl<B, F> hyper::body::Body for Observed<B, F>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    F: FnMut(usize) + Unpin,
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
                (this.seen)(data.len());
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

/// Copies bytes both ways between two upgraded connections: `up` is called
/// with each chunk's size from `client` to `app`, `down` the other way.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    up: impl Fn(usize),
    down: impl Fn(usize),
) {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "an upgrade failed");
            return;
        }
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (app_read, app_write) = tokio::io::split(TokioIo::new(app));
    tokio::join!(
        pump(client_read, app_write, up),
        pump(app_read, client_write, down)
    );
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    seen: impl Fn(usize),
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen(n);
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
