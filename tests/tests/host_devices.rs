//! Devices in session containers: real VT nodes through the same mapping
//! code the daemon uses; uinput where the kernel has it (else a loud skip —
//! scripts/device-lane proves it on a real kernel).

#[path = "host_support/mod.rs"]
mod support;

use std::path::Path;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_container_gets_its_tty_and_can_use_it() {
    if !Path::new("/dev/tty10").exists() {
        eprintln!("SKIPPED a_session_container_gets_its_tty_and_can_use_it: no /dev/tty10 on this machine");
        return;
    }
    let (_db, th) = warm_host(1, &[]).await;
    let session = th.host.sessions().pop().unwrap();
    let tty = session.tty.expect("the runtime needs a TTY");
    let container = format!("berth-{}", session.id);
    let node = format!("/dev/tty{tty}");
    // The node is there, a character device, and writable from inside.
    let (ok, out) = docker_status(&[
        "exec",
        &container,
        "sh",
        "-c",
        &format!("test -c {node} && printf '' > {node} && echo usable"),
    ]);
    assert!(
        ok && String::from_utf8_lossy(&out).trim() == "usable",
        "{node} inside: {}",
        String::from_utf8_lossy(&out)
    );
    // Only its own TTY: another VT is not mapped.
    let other = if tty == 10 { 11 } else { 10 };
    let (ok, _) = docker_status(&[
        "exec",
        &container,
        "test",
        "-e",
        &format!("/dev/tty{other}"),
    ]);
    assert!(!ok, "/dev/tty{other} must not be in the container");
    th.cleanup().await;
}

#[test]
fn uinput_devices_are_proven_in_the_device_lane_when_absent_here() {
    if berth_uinput::uinput_available("/dev/uinput") {
        return; // A real host: the berth-uinput tests ran natively.
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED uinput in session containers: /dev/uinput absent on this kernel; \
         scripts/device-lane proves the devices on a real kernel, and the mapping code is unit-tested"
    );
}
