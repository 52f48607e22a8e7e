//! The scaler's crash points (see `berth_common::faults`).

pub use berth_common::faults::point;

/// Every point (the kill harness iterates over these).
pub const POINTS: &[&str] = &[
    "launch.after_row",
    "launch.after_run",
    "launch.after_record",
    "deploy.after_buffer",
    "deploy.before_swap",
    "sweep.after_terminate",
];
