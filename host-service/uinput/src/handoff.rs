//! Handing fds to another process over a unix socket (SCM_RIGHTS).
//!
//! One hand-off is one `sendmsg`: the fds plus a short payload (e.g. a protocol tag naming the
//! order of the fds). The receiver gets its own fds for the same open files; writes through them
//! reach the same devices.

use std::io::IoSlice;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::UinputError;

/// The largest payload one hand-off carries; [`recv_fds`] reads at most this much.
pub const MAX_PAYLOAD: usize = 4096;
/// Linux's SCM_MAX_FD: the most fds one SCM_RIGHTS message can carry.
pub const MAX_FDS: usize = 253;

/// Sent in place of an empty payload: Linux drops SCM_RIGHTS sent with zero data bytes on a
/// stream socket, so (like Go's `syscall.Sendmsg`) one byte always goes along.
const FILLER: [u8; 1] = [0];

/// Sends `fds` and `payload` in one message. An empty payload is sent as a single 0 byte.
pub fn send_fds(
    sock: impl AsFd,
    fds: &[BorrowedFd<'_>],
    payload: &[u8],
) -> Result<(), UinputError> {
    if fds.len() > MAX_FDS {
        return Err(UinputError::TooLarge {
            what: "fds",
            len: fds.len(),
            max: MAX_FDS,
        });
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(UinputError::TooLarge {
            what: "payload bytes",
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let data = if payload.is_empty() {
        &FILLER[..]
    } else {
        payload
    };
    let raw_fds: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sock = sock.as_fd();
    let send_error = |source| UinputError::Send {
        count: raw_fds.len(),
        source,
    };
    // MSG_NOSIGNAL: a peer that hung up must be an error, not a SIGPIPE for the daemon.
    let flags = MsgFlags::MSG_NOSIGNAL;

    let mut sent = loop {
        let control = [ControlMessage::ScmRights(&raw_fds)];
        let control: &[ControlMessage<'_>] = if raw_fds.is_empty() { &[] } else { &control };
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(data)],
            control,
            flags,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(source) => return Err(send_error(source)),
            Ok(sent) => break sent,
        }
    };
    // The fds travelled with the first byte; a stream socket may take the rest in pieces.
    while sent < data.len() {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&data[sent..])],
            &[],
            flags,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(source) => return Err(send_error(source)),
            Ok(0) => return Err(send_error(Errno::EPIPE)),
            Ok(more) => sent += more,
        }
    }
    Ok(())
}

/// Receives one hand-off: up to `max_fds` fds (close-on-exec) and the payload bytes (at most
/// [`MAX_PAYLOAD`]). More fds than `max_fds` is an error, and all received fds are closed.
pub fn recv_fds(sock: impl AsFd, max_fds: usize) -> Result<(Vec<OwnedFd>, Vec<u8>), UinputError> {
    let sock = sock.as_fd();
    let mut payload = vec![0u8; MAX_PAYLOAD];
    // Room for the most fds one message can carry, whatever `max_fds` says: with a smaller
    // buffer the kernel would install the fds that fit and flag MSG_CTRUNC, and nix gives no
    // access to them then, so they would leak.
    let mut control = cmsg_space!([RawFd; MAX_FDS]);

    let (bytes, truncated, raw_fds) = loop {
        let mut iov = [IoSliceMut::new(&mut payload)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(source) => return Err(UinputError::Recv { source }),
            Ok(message) => {
                let mut raw_fds = Vec::new();
                let truncated = match message.cmsgs() {
                    Ok(cmsgs) => {
                        for cmsg in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                                raw_fds.extend(fds);
                            }
                        }
                        false
                    }
                    Err(_) => true,
                };
                break (message.bytes, truncated, raw_fds);
            }
        }
    };
    let fds: Vec<OwnedFd> = raw_fds
        .into_iter()
        // SAFETY: the kernel has just installed these fds in this process for this message;
        // nothing else knows them, so each gets exactly one owner here.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();

    // Every early return below drops `fds`, closing what was received.
    if truncated {
        return Err(UinputError::ControlTruncated);
    }
    if bytes == 0 && fds.is_empty() {
        return Err(UinputError::PeerClosed);
    }
    if fds.len() > max_fds {
        return Err(UinputError::TooManyFds {
            received: fds.len(),
            max: max_fds,
        });
    }
    payload.truncate(bytes);
    Ok((fds, payload))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixStream;

    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};

    use super::*;
    use crate::test_support::{fd_lock, open_fd_count, pipe_pair};

    #[test]
    fn pipe_write_ends_arrive_and_work() {
        let _lock = fd_lock();
        let baseline = open_fd_count();
        {
            let (sender, receiver) = UnixStream::pair().unwrap();
            let (read_a, write_a) = pipe_pair();
            let (read_b, write_b) = pipe_pair();
            send_fds(
                &sender,
                &[write_a.as_fd(), write_b.as_fd()],
                b"berth-uinput v1",
            )
            .unwrap();
            // The sender's copies can go: the receiver holds its own.
            drop((write_a, write_b));

            let (fds, payload) = recv_fds(&receiver, 3).unwrap();
            assert_eq!(payload, b"berth-uinput v1");
            assert_eq!(fds.len(), 2);
            for fd in &fds {
                let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
                assert!(
                    flags.contains(FdFlag::FD_CLOEXEC),
                    "received fd lacks CLOEXEC"
                );
            }
            let mut files = fds.into_iter().map(File::from);
            files.next().unwrap().write_all(b"to a").unwrap();
            files.next().unwrap().write_all(b"to b").unwrap();
            drop(files);

            let mut got = String::new();
            File::from(read_a).read_to_string(&mut got).unwrap();
            assert_eq!(got, "to a");
            got.clear();
            File::from(read_b).read_to_string(&mut got).unwrap();
            assert_eq!(got, "to b");
        }
        assert_eq!(open_fd_count(), baseline, "fd leak");
    }

    #[test]
    fn memfd_writes_through_the_received_fd_are_visible_to_the_sender() {
        let _lock = fd_lock();
        let baseline = open_fd_count();
        {
            let (sender, receiver) = UnixStream::pair().unwrap();
            let memfd =
                File::from(memfd_create("berth-handoff-test", MFdFlags::MFD_CLOEXEC).unwrap());
            send_fds(&sender, &[memfd.as_fd()], b"").unwrap();
            let (mut fds, payload) = recv_fds(&receiver, 1).unwrap();
            assert_eq!(payload, FILLER, "an empty payload travels as one 0 byte");
            let received = File::from(fds.remove(0));
            received
                .write_all_at(b"written by the receiver", 0)
                .unwrap();
            let mut buf = [0u8; 23];
            memfd.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"written by the receiver");
        }
        assert_eq!(open_fd_count(), baseline, "fd leak");
    }

    #[test]
    fn payload_without_fds() {
        let _lock = fd_lock();
        let (sender, receiver) = UnixStream::pair().unwrap();
        send_fds(&sender, &[], b"just bytes").unwrap();
        let (fds, payload) = recv_fds(&receiver, 0).unwrap();
        assert!(fds.is_empty());
        assert_eq!(payload, b"just bytes");
    }

    #[test]
    fn too_many_fds_are_all_closed() {
        let _lock = fd_lock();
        let baseline = open_fd_count();
        {
            let (sender, receiver) = UnixStream::pair().unwrap();
            let (read_end, write_end) = pipe_pair();
            send_fds(
                &sender,
                &[read_end.as_fd(), write_end.as_fd(), write_end.as_fd()],
                b"x",
            )
            .unwrap();
            let err = recv_fds(&receiver, 2).unwrap_err();
            assert!(
                matches!(
                    err,
                    UinputError::TooManyFds {
                        received: 3,
                        max: 2
                    }
                ),
                "{err}"
            );
        }
        assert_eq!(open_fd_count(), baseline, "fd leak");
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let _lock = fd_lock();
        let (sender, receiver) = UnixStream::pair().unwrap();
        drop(sender);
        let err = recv_fds(&receiver, 3).unwrap_err();
        assert!(matches!(err, UinputError::PeerClosed), "{err}");
    }

    #[test]
    fn sending_to_a_hung_up_peer_is_an_error_not_a_signal() {
        let _lock = fd_lock();
        let (sender, receiver) = UnixStream::pair().unwrap();
        drop(receiver);
        let (_read_end, write_end) = pipe_pair();
        let err = send_fds(&sender, &[write_end.as_fd()], b"x").unwrap_err();
        assert!(matches!(err, UinputError::Send { count: 1, .. }), "{err}");
    }

    #[test]
    fn limits_are_checked_before_sending() {
        let _lock = fd_lock();
        let (sender, _receiver) = UnixStream::pair().unwrap();
        let big = vec![1u8; MAX_PAYLOAD + 1];
        let err = send_fds(&sender, &[], &big).unwrap_err();
        assert!(matches!(err, UinputError::TooLarge { .. }), "{err}");
    }
}
