//! `struct input_event` on the wire: written to a uinput fd, read from an evdev node.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::codes::{EV_SYN, SYN_REPORT};
use crate::error::UinputError;

/// Size of `struct input_event` for this target (24 bytes on 64-bit Linux).
pub const INPUT_EVENT_SIZE: usize = std::mem::size_of::<libc::input_event>();

/// One input event without its timestamp (the kernel stamps events written to uinput).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputEvent {
    pub type_: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    pub const fn new(type_: u16, code: u16, value: i32) -> Self {
        Self { type_, code, value }
    }

    /// `EV_SYN SYN_REPORT 0`: the end of one frame of events.
    pub const fn syn_report() -> Self {
        Self::new(EV_SYN, SYN_REPORT, 0)
    }

    /// The wire form. The timestamp comes first and is left zero; `type`, `code` and `value` are
    /// the last 8 bytes on every Linux ABI, so no unsafe cast of the libc struct is needed.
    pub fn to_bytes(self) -> [u8; INPUT_EVENT_SIZE] {
        let mut bytes = [0u8; INPUT_EVENT_SIZE];
        let tail = INPUT_EVENT_SIZE - 8;
        bytes[tail..tail + 2].copy_from_slice(&self.type_.to_ne_bytes());
        bytes[tail + 2..tail + 4].copy_from_slice(&self.code.to_ne_bytes());
        bytes[tail + 4..].copy_from_slice(&self.value.to_ne_bytes());
        bytes
    }

    pub fn from_bytes(bytes: &[u8; INPUT_EVENT_SIZE]) -> Self {
        let tail = INPUT_EVENT_SIZE - 8;
        Self {
            type_: u16::from_ne_bytes([bytes[tail], bytes[tail + 1]]),
            code: u16::from_ne_bytes([bytes[tail + 2], bytes[tail + 3]]),
            value: i32::from_ne_bytes([
                bytes[tail + 4],
                bytes[tail + 5],
                bytes[tail + 6],
                bytes[tail + 7],
            ]),
        }
    }
}

impl fmt::Display for InputEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event type {:#x} code {:#x} value {}",
            self.type_, self.code, self.value
        )
    }
}

/// Writes `events` to a uinput fd in one `write(2)`. The kernel forwards them to the event node
/// at the next `SYN_REPORT`, so end a frame with [`InputEvent::syn_report`].
pub fn write_events(fd: impl AsFd, events: &[InputEvent]) -> Result<(), UinputError> {
    let fd = fd.as_fd();
    write_events_to(fd, events, || format!("fd {}", fd.as_raw_fd()))
}

/// [`write_events`] with a device name for the error message.
pub(crate) fn write_events_named(
    fd: BorrowedFd<'_>,
    events: &[InputEvent],
    device: &str,
) -> Result<(), UinputError> {
    write_events_to(fd, events, || format!("uinput device {device:?}"))
}

fn write_events_to(
    fd: BorrowedFd<'_>,
    events: &[InputEvent],
    target: impl Fn() -> String,
) -> Result<(), UinputError> {
    let bytes: Vec<u8> = events.iter().flat_map(|event| event.to_bytes()).collect();
    let written = loop {
        match nix::unistd::write(fd, &bytes) {
            Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(UinputError::Write {
                    target: target(),
                    event: events
                        .first()
                        .copied()
                        .unwrap_or_else(InputEvent::syn_report),
                    source,
                })
            }
            Ok(written) => break written,
        }
    };
    if written != bytes.len() {
        return Err(UinputError::ShortWrite {
            target: target(),
            written,
            expected: bytes.len(),
        });
    }
    Ok(())
}

/// Reads one event from an evdev node (`/dev/input/eventN`), waiting at most `timeout`.
/// `Ok(None)` means nothing arrived in time.
pub fn read_event(fd: impl AsFd, timeout: Duration) -> Result<Option<InputEvent>, UinputError> {
    let fd = fd.as_fd();
    let read_error = |source| UinputError::Read {
        target: format!("fd {}", fd.as_raw_fd()),
        source,
    };
    let deadline = Instant::now() + timeout;
    let mut bytes = [0u8; INPUT_EVENT_SIZE];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !wait_readable(fd.as_raw_fd(), left).map_err(read_error)? {
            return Ok(None);
        }
        match nix::unistd::read(fd, &mut bytes) {
            Ok(n) if n == INPUT_EVENT_SIZE => return Ok(Some(InputEvent::from_bytes(&bytes))),
            Ok(_) => return Err(read_error(Errno::EIO)),
            // A non-blocking node can still say EAGAIN after poll (another reader took the
            // event); poll again until the deadline.
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(source) => return Err(read_error(source)),
        }
    }
}

/// `poll(2)` for POLLIN on one fd. nix's `poll` wrapper sits behind a feature the workspace does
/// not enable, so this calls libc directly.
fn wait_readable(fd: libc::c_int, timeout: Duration) -> Result<bool, Errno> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `pollfd` is a valid, exclusively borrowed array of exactly one element for the
        // duration of the call, and `fd` is borrowed from a live `BorrowedFd` by the caller.
        let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
        match Errno::result(ready) {
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
            Ok(0) => return Ok(false),
            // POLLIN, or POLLERR/POLLHUP/POLLNVAL: either way read() tells what is there.
            Ok(_) => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{ABS_X, EV_ABS, EV_KEY, KEY_A};
    use crate::test_support::{fd_lock, pipe_pair};

    #[test]
    fn bytes_round_trip_and_match_the_libc_layout() {
        let event = InputEvent::new(EV_ABS, ABS_X, -1234);
        let bytes = event.to_bytes();
        assert_eq!(InputEvent::from_bytes(&bytes), event);
        assert!(bytes[..16].iter().all(|b| *b == 0), "timestamp left zero");
        assert_eq!(&bytes[16..18], &EV_ABS.to_ne_bytes());
        assert_eq!(&bytes[18..20], &ABS_X.to_ne_bytes());
        assert_eq!(&bytes[20..24], &(-1234i32).to_ne_bytes());
    }

    #[test]
    fn written_events_read_back_through_a_pipe() {
        let _lock = fd_lock();
        let (read_end, write_end) = pipe_pair();
        let frame = [InputEvent::new(EV_KEY, KEY_A, 1), InputEvent::syn_report()];
        write_events(&write_end, &frame).unwrap();
        for want in frame {
            let got = read_event(&read_end, Duration::from_secs(1)).unwrap();
            assert_eq!(got, Some(want));
        }
        let start = Instant::now();
        assert_eq!(
            read_event(&read_end, Duration::from_millis(50)).unwrap(),
            None
        );
        assert!(start.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn write_to_a_closed_pipe_is_an_error_not_a_panic() {
        let _lock = fd_lock();
        let (read_end, write_end) = pipe_pair();
        drop(read_end);
        // SIGPIPE is ignored by the Rust runtime, so the write fails with EPIPE.
        let err = write_events(&write_end, &[InputEvent::syn_report()]).unwrap_err();
        assert!(
            matches!(
                err,
                UinputError::Write {
                    source: Errno::EPIPE,
                    ..
                }
            ),
            "{err}"
        );
    }
}
