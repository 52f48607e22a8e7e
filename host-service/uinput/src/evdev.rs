//! Read-only queries on an evdev node (`/dev/input/eventN`): what the kernel says a device is.
//! Used to prove a created device carries the capabilities it was given.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::codes::{ABS_X, ABS_Y, EV_ABS, EV_KEY, EV_REL, KEY_MAX};
use crate::error::UinputError;
use crate::ioctl;

const LONG_BITS: usize = libc::c_ulong::BITS as usize;
/// Enough words for the largest bitmap queried (keys, 0..=KEY_MAX).
const BITMAP_WORDS: usize = (KEY_MAX as usize + 1).div_ceil(LONG_BITS);

/// `struct input_id` as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId {
    pub bustype: u16,
    pub vendor: u16,
    pub product: u16,
    pub version: u16,
}

/// One absolute axis as the kernel reports it (`struct input_absinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsInfo {
    pub value: i32,
    pub minimum: i32,
    pub maximum: i32,
    pub fuzz: i32,
    pub flat: i32,
    pub resolution: i32,
}

fn evdev_error(request: &'static str, fd: BorrowedFd<'_>) -> impl Fn(Errno) -> UinputError {
    let target = format!("fd {}", fd.as_raw_fd());
    move |source| UinputError::Evdev {
        request,
        target: target.clone(),
        source,
    }
}

/// The event types the device supports (`EVIOCGBIT(0, …)`), e.g. `[EV_SYN, EV_KEY, EV_REL]`.
pub fn event_types(fd: impl AsFd) -> Result<Vec<u16>, UinputError> {
    let fd = fd.as_fd();
    let mut bits = [0 as libc::c_ulong; BITMAP_WORDS];
    // SAFETY: `fd` is a live borrowed fd; the kernel writes at most `size_of_val(&bits)` bytes
    // into `bits`, which the macro passes as the ioctl size.
    unsafe { ioctl::eviocgbit_types(fd.as_raw_fd(), &mut bits) }
        .map_err(evdev_error("EVIOCGBIT(0)", fd))?;
    Ok(set_bits(&bits))
}

/// The codes the device supports for `ev_type` (`EV_KEY`, `EV_REL` or `EV_ABS`).
pub fn supported_codes(fd: impl AsFd, ev_type: u16) -> Result<Vec<u16>, UinputError> {
    let fd = fd.as_fd();
    let raw = fd.as_raw_fd();
    let mut bits = [0 as libc::c_ulong; BITMAP_WORDS];
    // In each arm `raw` comes from a live borrowed fd and the kernel writes at most
    // `size_of_val(&bits)` bytes into `bits`, the size the macro encodes in the request.
    let result = match ev_type {
        // SAFETY: see above.
        EV_KEY => unsafe { ioctl::eviocgbit_key(raw, &mut bits) },
        // SAFETY: see above.
        EV_REL => unsafe { ioctl::eviocgbit_rel(raw, &mut bits) },
        // SAFETY: see above.
        EV_ABS => unsafe { ioctl::eviocgbit_abs(raw, &mut bits) },
        _ => Err(Errno::EINVAL),
    };
    result.map_err(evdev_error("EVIOCGBIT(type)", fd))?;
    Ok(set_bits(&bits))
}

/// The input properties of the device (`EVIOCGPROP`), e.g. `[INPUT_PROP_POINTER]`.
pub fn properties(fd: impl AsFd) -> Result<Vec<u16>, UinputError> {
    let fd = fd.as_fd();
    let mut bits = [0 as libc::c_ulong; BITMAP_WORDS];
    // SAFETY: as in `event_types`: live fd, kernel bounded by the buffer size in the request.
    unsafe { ioctl::eviocgprop(fd.as_raw_fd(), &mut bits) }
        .map_err(evdev_error("EVIOCGPROP", fd))?;
    Ok(set_bits(&bits))
}

/// The device name (`EVIOCGNAME`).
pub fn name(fd: impl AsFd) -> Result<String, UinputError> {
    let fd = fd.as_fd();
    let mut buf = [0u8; 256];
    // SAFETY: live fd; the kernel copies at most `buf.len()` bytes, NUL included.
    unsafe { ioctl::eviocgname(fd.as_raw_fd(), &mut buf) }
        .map_err(evdev_error("EVIOCGNAME", fd))?;
    Ok(c_buf_to_string(&buf))
}

/// Bus, vendor, product and version (`EVIOCGID`).
pub fn device_id(fd: impl AsFd) -> Result<DeviceId, UinputError> {
    let fd = fd.as_fd();
    let mut id = libc::input_id {
        bustype: 0,
        vendor: 0,
        product: 0,
        version: 0,
    };
    // SAFETY: live fd; `id` is a valid `input_id`, exactly the type the request encodes.
    unsafe { ioctl::eviocgid(fd.as_raw_fd(), &mut id) }.map_err(evdev_error("EVIOCGID", fd))?;
    Ok(DeviceId {
        bustype: id.bustype,
        vendor: id.vendor,
        product: id.product,
        version: id.version,
    })
}

/// Range and current value of `ABS_X` or `ABS_Y` (`EVIOCGABS`).
pub fn abs_info(fd: impl AsFd, code: u16) -> Result<AbsInfo, UinputError> {
    let fd = fd.as_fd();
    let raw = fd.as_raw_fd();
    let mut info = libc::input_absinfo {
        value: 0,
        minimum: 0,
        maximum: 0,
        fuzz: 0,
        flat: 0,
        resolution: 0,
    };
    let result = match code {
        // SAFETY: live fd; `info` is a valid `input_absinfo`, the type the request encodes.
        ABS_X => unsafe { ioctl::eviocgabs_x(raw, &mut info) },
        // SAFETY: as for ABS_X.
        ABS_Y => unsafe { ioctl::eviocgabs_y(raw, &mut info) },
        _ => Err(Errno::EINVAL),
    };
    result.map_err(evdev_error("EVIOCGABS", fd))?;
    Ok(AbsInfo {
        value: info.value,
        minimum: info.minimum,
        maximum: info.maximum,
        fuzz: info.fuzz,
        flat: info.flat,
        resolution: info.resolution,
    })
}

/// Kernel bitmaps are arrays of `unsigned long`; bit n is bit n % BITS of word n / BITS.
fn set_bits(words: &[libc::c_ulong]) -> Vec<u16> {
    let mut codes = Vec::new();
    for (index, word) in words.iter().enumerate() {
        for bit in 0..LONG_BITS {
            if word & (1 << bit) != 0 {
                if let Ok(code) = u16::try_from(index * LONG_BITS + bit) {
                    codes.push(code);
                }
            }
        }
    }
    codes
}

pub(crate) fn c_buf_to_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_words_cover_every_key() {
        assert!(BITMAP_WORDS * LONG_BITS > usize::from(KEY_MAX));
        assert_eq!(BITMAP_WORDS * std::mem::size_of::<libc::c_ulong>(), 96);
    }

    #[test]
    fn set_bits_decodes_kernel_bitmaps() {
        let mut words = [0 as libc::c_ulong; BITMAP_WORDS];
        words[0] = 0b1011;
        words[0x110 / LONG_BITS] |= 1 << (0x110 % LONG_BITS);
        assert_eq!(set_bits(&words), vec![0, 1, 3, 0x110]);
    }

    #[test]
    fn c_buf_stops_at_nul() {
        assert_eq!(c_buf_to_string(b"input7\0garbage"), "input7");
        assert_eq!(c_buf_to_string(b"no-nul"), "no-nul");
    }

    #[test]
    fn queries_on_a_non_evdev_fd_are_errors() {
        let _lock = crate::test_support::fd_lock();
        let (read_end, _write_end) = crate::test_support::pipe_pair();
        let err = event_types(&read_end).unwrap_err();
        assert!(err.to_string().contains("EVIOCGBIT(0)"), "{err}");
        assert!(supported_codes(&read_end, 0x7).is_err());
        assert!(abs_info(&read_end, 0x10).is_err());
    }
}
