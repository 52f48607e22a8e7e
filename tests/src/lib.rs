//! End-to-end tests of the whole system on one machine (see `tests/`), and
//! [`client`]: what a client app does to get and use a session.

#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod client;
