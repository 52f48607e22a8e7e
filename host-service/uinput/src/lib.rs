//! Virtual input devices for a streamed desktop session, through `/dev/uinput`.
//!
//! Each session gets three devices, always in this order: an absolute pointer (the client's
//! cursor position), a relative mouse (motion and wheels) and a keyboard. The daemon
//! * creates them with [`SessionDevices::create`] (all-or-nothing),
//! * maps their `/dev/input/eventN` nodes ([`SessionDevices::event_nodes`]) into the container,
//!   where the X server reads them,
//! * hands their uinput fds ([`SessionDevices::fds`]) to the session's app over a unix socket
//!   with [`send_fds`] (SCM_RIGHTS); the app injects events by writing `struct input_event`s to
//!   them ([`write_events`]), without any access to `/dev/uinput` itself,
//! * destroys them at teardown ([`SessionDevices::destroy`], or by dropping them). Destroying
//!   removes the devices even while the app still holds its copies of the fds.
//!
//! Everything here is blocking and quick (a few ioctls; waiting for the event node takes
//! milliseconds, at most [`DEFAULT_NODE_TIMEOUT`]); async callers run it on a blocking thread.
//!
//! The ioctls live in one private module with tests pinning their request numbers and struct
//! layouts; `scripts/device-lane` runs the real-device tests (`tests/real_devices.rs`) on a real
//! kernel under qemu, since the development machines have no uinput.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_debug_implementations,
    rust_2018_idioms,
    clippy::undocumented_unsafe_blocks
)]

pub mod codes;
mod device;
mod error;
pub mod evdev;
mod event;
mod handoff;
mod ioctl;
mod session;
#[cfg(test)]
mod test_support;

use std::path::Path;

pub use device::{
    AbsAxis, Capabilities, DeviceKind, DeviceNumber, UinputConfig, VirtualDevice, BUS_TYPE,
    DEFAULT_ABS_MAX, DEFAULT_DEV_INPUT_DIR, DEFAULT_NODE_TIMEOUT, DEFAULT_SYSFS_INPUT_DIR,
    DEFAULT_UINPUT_PATH, DEVICE_VERSION, KEYBOARD_EXCLUDED_KEYS, MAX_NAME_LEN, VENDOR_ID,
};
pub use error::UinputError;
pub use event::{read_event, write_events, InputEvent, INPUT_EVENT_SIZE};
pub use handoff::{recv_fds, send_fds, MAX_FDS, MAX_PAYLOAD};
pub use session::SessionDevices;

/// Whether `path` (normally `/dev/uinput`) can be opened for writing, i.e. whether devices can be
/// created. [`check_uinput`] says why not.
pub fn uinput_available(path: impl AsRef<Path>) -> bool {
    check_uinput(path).is_ok()
}

/// Opens and closes `path` as device creation would; the error says what is missing and what to
/// do about it.
pub fn check_uinput(path: impl AsRef<Path>) -> Result<(), UinputError> {
    device::open_uinput(path.as_ref()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_node_is_unavailable_with_a_reason() {
        let _lock = test_support::fd_lock();
        let path = "/nonexistent/berth/uinput";
        assert!(!uinput_available(path));
        let err = check_uinput(path).unwrap_err();
        assert!(err.to_string().contains("modprobe uinput"), "{err}");
    }
}
