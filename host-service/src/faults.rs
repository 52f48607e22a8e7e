//! Crash points for the kill harness: in debug builds (the tests), setting
//! `BERTH_FAULT_POINT=<name>` makes the process abort when it reaches that
//! point — exactly what `kill -9` there would do. Release builds compile the
//! check away, so no setting can crash a production daemon.

/// Every point, in lifecycle order (the kill harness iterates over these).
pub const POINTS: &[&str] = &[
    "spawn.after_resources",
    "spawn.after_container",
    "spawn.after_row",
    "claim.after_update",
    "finish.after_config",
    "finish.after_running",
    "teardown.after_dying",
    "teardown.after_container",
    "teardown.after_delete",
    "drain.after_warm",
    "drain.before_terminating",
];

#[inline]
pub fn point(name: &'static str) {
    #[cfg(debug_assertions)]
    {
        static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let armed = ARMED.get_or_init(|| std::env::var("BERTH_FAULT_POINT").ok());
        if armed.as_deref() == Some(name) {
            eprintln!("host-service: fault point {name} reached; aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
