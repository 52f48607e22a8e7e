//! Per-session host resources. Each allocator is a small table owned by the
//! daemon; every allocation is also written into the container's labels so a
//! restarted daemon can rebuild the tables from Docker alone.

pub mod devices;
pub mod gpus;
pub mod ports;
pub mod ttys;
pub mod uinput;
pub mod volumes;

pub use ports::{PortAllocator, PortMapping, Protocol};
pub use ttys::TtyAllocator;
