//! The one error type of the crate. Each message says what failed and what an operator can do.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

use crate::event::InputEvent;

/// Everything that can go wrong creating, driving, destroying or handing off uinput devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UinputError {
    #[error("opening {}: {source}; {hint}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
        hint: &'static str,
    },

    #[error("uinput device name {name:?} {reason}; pass a shorter tag of printable characters")]
    InvalidName { name: String, reason: &'static str },

    #[error("uinput configuration: {reason}")]
    InvalidConfig { reason: String },

    #[error(
        "{request} for uinput device {device:?}: {source}; the kernel rejected the device \
         description (UI_DEV_SETUP needs Linux 4.5 or later)"
    )]
    Ioctl {
        request: &'static str,
        device: String,
        #[source]
        source: Errno,
    },

    #[error(
        "no /dev/input/event node for uinput device {device:?} ({sysname}) after {waited:?}: \
         {detail}; load the evdev module (modprobe evdev) and check that devtmpfs is mounted on /dev"
    )]
    EventNode {
        device: String,
        sysname: String,
        waited: Duration,
        detail: String,
    },

    #[error(
        "event node {} of uinput device {device:?} {detail}; /dev must be a devtmpfs",
        path.display()
    )]
    EventNodeNumber {
        device: String,
        path: PathBuf,
        detail: String,
    },

    #[error(
        "looking for the event node of uinput device {device:?} in {}: {source}; is sysfs \
         mounted on /sys?",
        path.display()
    )]
    Sysfs {
        device: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "writing {event} to {target}: {source}; the device was destroyed, or the fd is not a \
         created uinput device"
    )]
    Write {
        target: String,
        event: InputEvent,
        #[source]
        source: Errno,
    },

    #[error("writing events to {target}: the kernel took {written} of {expected} bytes")]
    ShortWrite {
        target: String,
        written: usize,
        expected: usize,
    },

    #[error("reading an input event from {target}: {source}")]
    Read {
        target: String,
        #[source]
        source: Errno,
    },

    #[error(
        "{request} on {target}: {source}; the fd is not an evdev node (/dev/input/eventN) or the \
         device is gone"
    )]
    Evdev {
        request: &'static str,
        target: String,
        #[source]
        source: Errno,
    },

    #[error(
        "destroying uinput device {device:?} (UI_DEV_DESTROY): {source}; the fd is closed anyway \
         and the device goes away once every process holding it has closed it"
    )]
    Destroy {
        device: String,
        #[source]
        source: Errno,
    },

    #[error(
        "sending {count} fds over the unix socket: {source}; the peer hung up or the fd is not a \
         connected unix socket"
    )]
    Send {
        count: usize,
        #[source]
        source: Errno,
    },

    #[error("receiving fds from the unix socket: {source}")]
    Recv {
        #[source]
        source: Errno,
    },

    #[error("the peer closed the unix socket before sending anything")]
    PeerClosed,

    #[error(
        "received {received} fds where at most {max} were expected; all of them were closed \
         (sender and receiver disagree on the hand-off protocol)"
    )]
    TooManyFds { received: usize, max: usize },

    #[error(
        "the fd message was truncated (MSG_CTRUNC); the receiving process is probably out of \
         file descriptors (raise RLIMIT_NOFILE)"
    )]
    ControlTruncated,

    #[error("a hand-off carries at most {max} {what}, got {len}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// The operator's next step for a failed open of the uinput node, by errno.
pub(crate) fn open_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) | Some(Errno::ENODEV) | Some(Errno::ENXIO) => {
            "load the uinput module (modprobe uinput) or run with BERTH_UINPUT=off"
        }
        Some(Errno::EACCES) | Some(Errno::EPERM) => {
            "run the daemon as root (or give it write access to the node) or run with BERTH_UINPUT=off"
        }
        _ => "check the uinput node, or run with BERTH_UINPUT=off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_uinput_says_what_to_do() {
        let source = io::Error::from_raw_os_error(libc::ENOENT);
        let hint = open_hint(&source);
        let err = UinputError::Open {
            path: PathBuf::from("/dev/uinput"),
            source,
            hint,
        };
        assert_eq!(
            err.to_string(),
            "opening /dev/uinput: No such file or directory (os error 2); load the uinput module \
             (modprobe uinput) or run with BERTH_UINPUT=off"
        );
    }

    #[test]
    fn permission_denied_says_run_as_root() {
        let hint = open_hint(&io::Error::from_raw_os_error(libc::EACCES));
        assert!(hint.contains("root"), "{hint}");
    }
}
