//! Waiting for a session's app to be ready, as its runtime declares: an HTTP
//! path answering 2xx, a TCP port accepting, or a file appearing. Probes go to
//! the container's own address — a published host port would be answered by
//! Docker's userland proxy even when nothing listens inside.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::Readiness;

#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the app was not ready within {0:?} ({1})")]
    Timeout(Duration, String),
    #[error("the container has no address to probe; is it attached to a network?")]
    NoAddress,
}

/// Polls until ready or `timeout`; answers how many probes it took. The
/// first probe goes out at once, then one every millisecond for the first
/// 50 ms: a warm app turns ready some milliseconds after it finds its config,
/// and the time between that and the probe that sees it is added to the
/// client's json_transport (with the old 2-4-5 ms steps, 2-3 ms on average).
/// A refused connect costs microseconds, so the dense start is cheap. Then
/// every 5 ms up to 250 ms, then doubling to 25 ms for apps that take their time.
const FAST_POLLING: Duration = Duration::from_millis(50);
const FINE_POLLING: Duration = Duration::from_millis(250);

pub async fn wait_ready(
    readiness: &Readiness,
    container_ip: Option<IpAddr>,
    session_dir: &Path,
    timeout: Duration,
) -> Result<u32, NotReady> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut pause = Duration::from_millis(1);
    let mut probes = 0;
    let mut last = String::from("no probe ran");
    loop {
        probes += 1;
        let attempt = probe_once(readiness, container_ip, session_dir);
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(())) => return Ok(probes),
            Ok(Err(ProbeError::NoAddress)) => return Err(NotReady::NoAddress),
            Ok(Err(ProbeError::NotYet(why))) => last = why,
            Err(_) => return Err(NotReady::Timeout(timeout, last)),
        }
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(NotReady::Timeout(timeout, last));
        }
        tokio::time::sleep(pause).await;
        let elapsed = started.elapsed();
        pause = if elapsed < FAST_POLLING {
            Duration::from_millis(1)
        } else if elapsed < FINE_POLLING {
            Duration::from_millis(5)
        } else {
            (pause * 2).clamp(Duration::from_millis(5), Duration::from_millis(25))
        };
    }
}

enum ProbeError {
    NoAddress,
    NotYet(String),
}

async fn probe_once(
    readiness: &Readiness,
    ip: Option<IpAddr>,
    session_dir: &Path,
) -> Result<(), ProbeError> {
    match readiness {
        Readiness::File { path } => {
            // The directory is the container's to write: its links are not followed.
            let (dir, name) = (session_dir.to_owned(), path.clone());
            let found = tokio::task::spawn_blocking(move || {
                crate::session::dir::regular_file_beneath(&dir, &name)
            })
            .await
            .unwrap_or(false);
            found
                .then_some(())
                .ok_or_else(|| ProbeError::NotYet(format!("file {path} not there yet")))
        }
        Readiness::Tcp { port } => {
            let addr = SocketAddr::new(ip.ok_or(ProbeError::NoAddress)?, *port);
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| ProbeError::NotYet(format!("tcp {addr}: {e}")))
        }
        Readiness::Http { port, path } => {
            let addr = SocketAddr::new(ip.ok_or(ProbeError::NoAddress)?, *port);
            http_status(addr, path)
                .await
                .and_then(|s| {
                    (200..300)
                        .contains(&s)
                        .then_some(())
                        .ok_or_else(|| format!("answered HTTP {s}"))
                })
                .map_err(|e| ProbeError::NotYet(format!("http {addr}{path}: {e}")))
        }
    }
}

/// The status code of `GET path` over HTTP/1.0; small on purpose (one
/// request, no body read).
async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("invalid probe path {path:?}"));
    }
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: berth-readiness\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = std::str::from_utf8(&head[..len]).map_err(|_| "not HTTP".to_owned())?;
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn http_readiness_waits_for_a_2xx() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                n += 1;
                let answer: &[u8] = if n < 3 {
                    b"HTTP/1.0 503 Unavailable\r\n\r\n"
                } else {
                    b"HTTP/1.0 200 OK\r\n\r\nready"
                };
                let _ = s.write_all(answer).await;
            }
        });
        let readiness = Readiness::Http {
            port,
            path: "/ready".into(),
        };
        let probes = wait_ready(
            &readiness,
            Some([127, 0, 0, 1].into()),
            Path::new("/nonexistent"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(probes, 3, "two 503s, then the 200");
    }

    #[tokio::test]
    async fn tcp_readiness_times_out_when_nothing_listens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let readiness = Readiness::Tcp { port };
        let err = wait_ready(
            &readiness,
            Some([127, 0, 0, 1].into()),
            Path::new("/"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NotReady::Timeout(..)), "{err}");
    }

    #[tokio::test]
    async fn file_readiness_sees_the_file_appear() {
        let dir = std::env::temp_dir().join(format!("berth-ready-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let readiness = Readiness::File {
            path: "ready".into(),
        };
        let writer = {
            let dir = dir.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                std::fs::write(dir.join("ready"), b"").unwrap();
            })
        };
        wait_ready(&readiness, None, &dir, Duration::from_secs(5))
            .await
            .unwrap();
        writer.await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
