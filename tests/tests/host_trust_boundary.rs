//! A session's container is hostile: what it plants in its own directory
//! (`/berth`, the host's `sessions/<id>`) must never redirect a root write of
//! the daemon or make the daemon look outside that directory.

#[path = "host_support/mod.rs"]
mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_in_the_session_directory_redirect_no_root_write() {
    let (db, th) = warm_host(1, &[]).await;
    let (id, token) = allocate(&db.pool, &th.host_id, "mallory").await;
    eventually("the host to claim it", Duration::from_secs(10), || async {
        session_status(&db.pool, id).await.as_deref() == Some("CONNECTING")
    })
    .await;
    let container = format!("berth-{id}");
    let victims: Vec<std::path::PathBuf> = (0..3)
        .map(|i| std::env::temp_dir().join(format!("berth-victim-{}-{i}", uuid::Uuid::new_v4())))
        .collect();
    std::fs::write(&victims[0], b"a host file the session must not change").unwrap();
    // Before json_transport: links at the config's name and at every temp
    // name a daemon might use; during it, a loop keeps planting the old one.
    let plant = format!(
        "ln -s {v0} /berth/config.json && ln -s {v1} /berth/.config.json.tmp && \
         for i in 0 1 2 3 4 5 6 7 8 9; do ln -s {v2} /berth/.config.json.$i.tmp; done",
        v0 = victims[0].display(),
        v1 = victims[1].display(),
        v2 = victims[2].display(),
    );
    let (planted, _) = docker_status(&["exec", &container, "sh", "-c", &plant]);
    assert!(planted, "planting links inside the container");
    let during = format!(
        "i=0; while [ $i -lt 2000 ]; do ln -sf {v1} /berth/.config.json.tmp; i=$((i+1)); done",
        v1 = victims[1].display()
    );
    docker(&["exec", "-d", &container, "sh", "-c", &during]);

    let response = th
        .json_transport(&token, id, "{\"user\": \"mallory\"}")
        .await;
    assert_eq!(response.status(), 200, "the session still starts");
    assert_eq!(
        std::fs::read(&victims[0]).unwrap(),
        b"a host file the session must not change"
    );
    assert!(
        !victims[1].exists(),
        "no host file created through a planted link"
    );
    assert!(
        !victims[2].exists(),
        "no host file created through a planted link"
    );
    let (ok, inside) = docker_status(&["exec", &container, "cat", "/berth/config.json"]);
    assert!(ok);
    assert_eq!(
        inside, b"{\"user\": \"mallory\"}",
        "the config replaced the planted link"
    );
    let _ = std::fs::remove_file(&victims[0]);
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_file_behind_a_link_is_not_ready() {
    let db = TestDb::new().await;
    // The app never creates `ready`; the container links it to a host file
    // that exists. Following the link would call the session ready.
    add_runtime(&db, RUNTIME, serde_json::json!({}), 2).await;
    sqlx::query("UPDATE runtimes SET readiness = '{\"file\": {\"path\": \"ready\"}}'")
        .execute(&db.pool)
        .await
        .unwrap();
    let th = start_host(
        &db,
        HostArgs {
            capacity: 1,
            ..Default::default()
        },
    )
    .await;
    wait_warm(&db, &th, 1).await;
    let (id, token) = allocate(&db.pool, &th.host_id, "mallory").await;
    eventually("the host to claim it", Duration::from_secs(10), || async {
        session_status(&db.pool, id).await.as_deref() == Some("CONNECTING")
    })
    .await;
    let (planted, _) = docker_status(&[
        "exec",
        &format!("berth-{id}"),
        "ln",
        "-s",
        "/etc/hostname",
        "/berth/ready",
    ]);
    assert!(planted);
    let response = th.json_transport(&token, id, "{}").await;
    assert_eq!(
        response.status(),
        504,
        "a link to a host file is not the app's readiness file"
    );
    th.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_fills_its_storage_hurts_only_itself() {
    let (db, th) = warm_host(2, &["--session-storage-mib", "4"]).await;
    let (a, token_a) = allocate(&db.pool, &th.host_id, "filler").await;
    assert_eq!(th.json_transport(&token_a, a, "{}").await.status(), 200);
    let filler = format!("berth-{a}");
    for dir in ["/berth", "/var/log/berth", "/tmp/sockets"] {
        let fill = format!("dd if=/dev/zero of={dir}/fill bs=1M count=32 2>&1; echo rc=$?");
        let (_, out) = docker_status(&["exec", &filler, "sh", "-c", &fill]);
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains("No space left on device") && !out.contains("rc=0"),
            "writing 32 MiB into {dir} past its 4 MiB cap: {out}"
        );
    }

    // The daemon's state dir still takes writes, and a neighbour starts.
    std::fs::write(th.state_dir.join("still-writable"), b"yes").unwrap();
    let (b, token_b) = allocate(&db.pool, &th.host_id, "neighbour").await;
    let response = th.json_transport(&token_b, b, "{\"n\": 1}").await;
    assert_eq!(response.status(), 200, "the neighbour's json_transport");
    let (ok, config) = docker_status(&["exec", &format!("berth-{b}"), "cat", "/berth/config.json"]);
    assert!(ok);
    assert_eq!(config, b"{\"n\": 1}");

    // Teardown takes the filled storage with it: no mount of A's is left.
    assert_eq!(th.delete_session(&token_a, a).await.status(), 200);
    eventually(
        "A's storage to be unmounted",
        Duration::from_secs(20),
        || async {
            !std::fs::read_to_string("/proc/self/mounts")
                .unwrap()
                .contains(&a.to_string())
        },
    )
    .await;
    th.cleanup().await;
    db.drop_database().await;
}
