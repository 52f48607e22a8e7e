//! `host-service --help` explains the daemon's settings, and the host holds
//! no database settings: it reaches the fleet only through the control plane.
//! (Also makes `cargo test` build the binary the cross-service tests run.)

use std::process::Command;

#[test]
fn help_names_the_control_plane_settings_and_no_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_host-service"))
        .arg("--help")
        .output()
        .expect("running host-service --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for setting in ["BERTH_CONTROL_URL", "BERTH_HOST_TOKEN", "BERTH_CONTROL_CA"] {
        assert!(help.contains(setting), "--help names {setting}: {help}");
    }
    for gone in ["DATABASE_URL", "BERTH_MIGRATE"] {
        assert!(!help.contains(gone), "a host has no {gone}: {help}");
    }
}
