//! A small IMDSv2-compatible server on loopback: tokens are required and
//! expire after the TTL the client asked for, values come from a map, unknown
//! paths are 404. Tests point the client (and the host daemon) at it, and local
//! mode can give each local "instance" an identity with it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{MAX_TOKEN_TTL, TOKEN_HEADER, TOKEN_PATH, TTL_HEADER};

#[derive(Debug, Default)]
struct State {
    values: Mutex<HashMap<String, String>>,
    tokens: Mutex<HashMap<String, Instant>>,
    token_requests: AtomicUsize,
    rejected_requests: AtomicUsize,
}

/// Runs until dropped.
#[derive(Debug)]
pub struct ImdsServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The metadata map of a typical instance, keyed by path.
pub fn instance_values(
    instance_id: &str,
    instance_type: &str,
    region: &str,
    ami_id: &str,
    ip: &str,
) -> HashMap<String, String> {
    [
        ("/latest/meta-data/instance-id", instance_id),
        ("/latest/meta-data/instance-type", instance_type),
        ("/latest/meta-data/placement/region", region),
        (
            "/latest/meta-data/placement/availability-zone",
            &format!("{region}a"),
        ),
        ("/latest/meta-data/ami-id", ami_id),
        ("/latest/meta-data/public-ipv4", ip),
        ("/latest/meta-data/local-ipv4", ip),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl ImdsServer {
    /// Binds `addr` (use port 0 for any) and serves `values`.
    pub async fn start(addr: SocketAddr, values: HashMap<String, String>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            values: Mutex::new(values),
            ..State::default()
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Invalidates every issued token, as a metadata service restart would.
    pub fn expire_all_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    pub fn set_value(&self, path: &str, value: Option<&str>) {
        let mut values = lock(&self.state.values);
        match value {
            Some(v) => values.insert(path.to_owned(), v.to_owned()),
            None => values.remove(path),
        };
    }

    /// How many tokens were handed out.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// How many GETs came without a valid token.
    pub fn rejected_requests(&self) -> usize {
        self.state.rejected_requests.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the maps inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    if req.uri().path() == TOKEN_PATH {
        if req.method() != Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        // Like EC2: a proxied token request is refused.
        if header("x-forwarded-for").is_some() {
            return reply(StatusCode::FORBIDDEN, "");
        }
        let ttl = header(TTL_HEADER).and_then(|v| v.parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=MAX_TOKEN_TTL.as_secs()).contains(t)) else {
            return reply(StatusCode::BAD_REQUEST, "");
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        lock(&state.tokens).insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
        state.token_requests.fetch_add(1, Ordering::SeqCst);
        return reply(StatusCode::OK, token);
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let valid = header(TOKEN_HEADER)
        .and_then(|t| lock(&state.tokens).get(t).copied())
        .is_some_and(|expiry| Instant::now() < expiry);
    if !valid {
        state.rejected_requests.fetch_add(1, Ordering::SeqCst);
        return reply(StatusCode::UNAUTHORIZED, "");
    }
    match lock(&state.values).get(req.uri().path()) {
        Some(value) => reply(StatusCode::OK, value.clone()),
        None => reply(StatusCode::NOT_FOUND, ""),
    }
}
