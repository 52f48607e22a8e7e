//! Docker unreachable for a while. The daemon talks to Docker through a unix
//! socket proxy this test can cut (DOCKER_HOST), so the shared engine is never
//! stopped. The only test in its binary, because DOCKER_HOST is process-wide.

#[path = "host_support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

const ENGINE: &str = "/var/run/docker.sock";

/// Forwards connections to the engine while up; when down, drops every open
/// connection and refuses new ones.
struct DockerProxy {
    path: PathBuf,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

/// The socket goes with the proxy, pass or fail.
impl Drop for DockerProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl DockerProxy {
    fn start() -> Self {
        let path =
            std::env::temp_dir().join(format!("berth-docker-proxy-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                conns2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect(ENGINE).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                }));
            }
        });
        Self {
            path,
            up,
            connections,
            _accept: accept,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_outage_is_reported_sessions_are_kept_and_everything_recovers() {
    let proxy = DockerProxy::start();
    std::env::set_var("DOCKER_HOST", format!("unix://{}", proxy.path.display()));
    let (db, th) = warm_host(3, &["--resync-secs", "1"]).await;
    let (running, running_token) = allocate(&db.pool, &th.host_id, "a").await;
    let r = th.json_transport(&running_token, running, "{}").await;
    assert_eq!(r.status(), 200);
    let port = r.json::<serde_json::Value>().await.unwrap()["ports"][0]["host_port"]
        .as_u64()
        .unwrap();

    proxy.down();
    // Readiness says so; running sessions keep serving (they do not need the API).
    eventually(
        "readyz to report Docker",
        Duration::from_secs(20),
        || async {
            th.client()
                .get(th.url("/readyz"))
                .send()
                .await
                .map(|r| r.status() == 503)
                .unwrap_or(false)
        },
    )
    .await;
    let body = th
        .client()
        .get(th.url("/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("docker"), "{body}");
    let served = reqwest::get(format!("http://127.0.0.1:{port}/config.json"))
        .await
        .unwrap();
    assert!(served.status().is_success());
    // A warm session can still be finished: only readiness and the DB are involved.
    let (second, second_token) = allocate(&db.pool, &th.host_id, "b").await;
    let r = th.json_transport(&second_token, second, "{}").await;
    assert_eq!(
        r.status(),
        200,
        "finishing a warm session needs no Docker call"
    );
    // Ending a session cannot remove its container now: it stays DYING with
    // its TTY and ports held, rather than handing them to someone else.
    let r = th.delete_session(&running_token, running).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        session_status(&db.pool, running).await.as_deref(),
        Some("DYING")
    );
    let held = th.host.resources().ports.in_use();
    assert_eq!(
        held, 3,
        "the dying session's port stays reserved while its container may run"
    );

    proxy.up();
    eventually(
        "the interrupted teardown to finish",
        Duration::from_secs(60),
        || async { session_status(&db.pool, running).await.is_none() },
    )
    .await;
    let gone = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=berth.session={running}"),
    ]);
    assert!(
        gone.trim().is_empty(),
        "its container is removed once Docker is back"
    );
    // The pool refills to the free slots; Docker and the rows agree again.
    eventually(
        "the warm pool to refill",
        Duration::from_secs(60),
        || async {
            let free = free_slots(&db.pool, &th.host_id).await as i64;
            count_status(&db.pool, &th.host_id, "WAITING").await == free && free == 2
        },
    )
    .await;
    assert_eq!(
        th.client()
            .get(th.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    th.cleanup().await;
    std::env::remove_var("DOCKER_HOST");
}
