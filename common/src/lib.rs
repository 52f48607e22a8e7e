//! Pieces both Berth services share: the vocabulary (ids and statuses), the
//! database (pool, schema, guarded updates), the IMDSv2 client, TLS with
//! fingerprint pinning, session tokens, configuration helpers and telemetry.

#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod atomic_file;
pub mod auth;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod entry;
pub mod exposition;
pub mod faults;
pub mod grant;
pub mod host_api;
pub mod http;
pub mod ids;
pub mod imds;
pub mod mounts;
pub mod operator;
pub mod relay;
pub mod telemetry;
pub mod tls;

pub use ids::{
    DeployState, HostId, HostStatus, ImageStatus, LaunchState, SessionId, SessionOutcome,
    SessionStatus,
};
