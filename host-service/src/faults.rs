//! The daemon's crash points (see `berth_common::faults`).

pub use berth_common::faults::point;

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
