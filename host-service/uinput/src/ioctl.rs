//! Every uinput and evdev ioctl of the crate, declared with nix's macros. The request numbers
//! and struct sizes are pinned by the tests below against <linux/uinput.h> and <linux/input.h>.
//!
//! The generated functions are `unsafe`: each caller passes an fd it owns and a buffer or struct
//! of exactly the type named here, and says so in a `// SAFETY:` comment.

use nix::{ioctl_none, ioctl_read, ioctl_read_buf, ioctl_write_int, ioctl_write_ptr};

pub(crate) const UINPUT_IOCTL_BASE: u8 = b'U';
pub(crate) const EVDEV_IOCTL_BASE: u8 = b'E';

// <linux/uinput.h>
pub(crate) const NR_UI_DEV_CREATE: u8 = 1;
pub(crate) const NR_UI_DEV_DESTROY: u8 = 2;
pub(crate) const NR_UI_DEV_SETUP: u8 = 3;
pub(crate) const NR_UI_ABS_SETUP: u8 = 4;
pub(crate) const NR_UI_GET_SYSNAME: u8 = 44;
pub(crate) const NR_UI_SET_EVBIT: u8 = 100;
pub(crate) const NR_UI_SET_KEYBIT: u8 = 101;
pub(crate) const NR_UI_SET_RELBIT: u8 = 102;
pub(crate) const NR_UI_SET_ABSBIT: u8 = 103;
pub(crate) const NR_UI_SET_PROPBIT: u8 = 110;

// <linux/input.h>
pub(crate) const NR_EVIOCGID: u8 = 0x02;
pub(crate) const NR_EVIOCGNAME: u8 = 0x06;
pub(crate) const NR_EVIOCGPROP: u8 = 0x09;
/// EVIOCGBIT(ev, len) is 0x20 + ev; nix needs the number at compile time, hence one function per
/// event type.
pub(crate) const NR_EVIOCGBIT_BASE: u8 = 0x20;
/// EVIOCGABS(abs) is 0x40 + abs.
pub(crate) const NR_EVIOCGABS_BASE: u8 = 0x40;

ioctl_none!(ui_dev_create, UINPUT_IOCTL_BASE, NR_UI_DEV_CREATE);
ioctl_none!(ui_dev_destroy, UINPUT_IOCTL_BASE, NR_UI_DEV_DESTROY);
ioctl_write_ptr!(
    ui_dev_setup,
    UINPUT_IOCTL_BASE,
    NR_UI_DEV_SETUP,
    libc::uinput_setup
);
ioctl_write_ptr!(
    ui_abs_setup,
    UINPUT_IOCTL_BASE,
    NR_UI_ABS_SETUP,
    libc::uinput_abs_setup
);
ioctl_read_buf!(ui_get_sysname, UINPUT_IOCTL_BASE, NR_UI_GET_SYSNAME, u8);
ioctl_write_int!(ui_set_evbit, UINPUT_IOCTL_BASE, NR_UI_SET_EVBIT);
ioctl_write_int!(ui_set_keybit, UINPUT_IOCTL_BASE, NR_UI_SET_KEYBIT);
ioctl_write_int!(ui_set_relbit, UINPUT_IOCTL_BASE, NR_UI_SET_RELBIT);
ioctl_write_int!(ui_set_absbit, UINPUT_IOCTL_BASE, NR_UI_SET_ABSBIT);
ioctl_write_int!(ui_set_propbit, UINPUT_IOCTL_BASE, NR_UI_SET_PROPBIT);

ioctl_read!(eviocgid, EVDEV_IOCTL_BASE, NR_EVIOCGID, libc::input_id);
ioctl_read_buf!(eviocgname, EVDEV_IOCTL_BASE, NR_EVIOCGNAME, u8);
ioctl_read_buf!(eviocgprop, EVDEV_IOCTL_BASE, NR_EVIOCGPROP, libc::c_ulong);
ioctl_read_buf!(
    eviocgbit_types,
    EVDEV_IOCTL_BASE,
    NR_EVIOCGBIT_BASE,
    libc::c_ulong
);
ioctl_read_buf!(
    eviocgbit_key,
    EVDEV_IOCTL_BASE,
    NR_EVIOCGBIT_BASE + 0x01,
    libc::c_ulong
);
ioctl_read_buf!(
    eviocgbit_rel,
    EVDEV_IOCTL_BASE,
    NR_EVIOCGBIT_BASE + 0x02,
    libc::c_ulong
);
ioctl_read_buf!(
    eviocgbit_abs,
    EVDEV_IOCTL_BASE,
    NR_EVIOCGBIT_BASE + 0x03,
    libc::c_ulong
);
ioctl_read!(
    eviocgabs_x,
    EVDEV_IOCTL_BASE,
    NR_EVIOCGABS_BASE,
    libc::input_absinfo
);
ioctl_read!(
    eviocgabs_y,
    EVDEV_IOCTL_BASE,
    NR_EVIOCGABS_BASE + 0x01,
    libc::input_absinfo
);

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    //! Expected values were printed by a C program compiled with gcc against the Debian 12
    //! headers (/usr/include/linux/uinput.h, linux-libc-dev 6.1), e.g.
    //! `printf("%#lx", (unsigned long)UI_DEV_SETUP)`.

    use std::mem::{offset_of, size_of};

    use nix::{request_code_none, request_code_read, request_code_write};

    use super::*;

    type Req = nix::sys::ioctl::ioctl_num_type;

    #[test]
    fn uinput_request_codes_match_the_kernel_headers() {
        let int = size_of::<libc::c_int>();
        let cases: [(&str, Req, Req); 10] = [
            (
                "UI_DEV_CREATE",
                request_code_none!(UINPUT_IOCTL_BASE, NR_UI_DEV_CREATE),
                0x5501,
            ),
            (
                "UI_DEV_DESTROY",
                request_code_none!(UINPUT_IOCTL_BASE, NR_UI_DEV_DESTROY),
                0x5502,
            ),
            (
                "UI_DEV_SETUP",
                request_code_write!(
                    UINPUT_IOCTL_BASE,
                    NR_UI_DEV_SETUP,
                    size_of::<libc::uinput_setup>()
                ),
                0x405c_5503,
            ),
            (
                "UI_ABS_SETUP",
                request_code_write!(
                    UINPUT_IOCTL_BASE,
                    NR_UI_ABS_SETUP,
                    size_of::<libc::uinput_abs_setup>()
                ),
                0x401c_5504,
            ),
            (
                "UI_SET_EVBIT",
                request_code_write!(UINPUT_IOCTL_BASE, NR_UI_SET_EVBIT, int),
                0x4004_5564,
            ),
            (
                "UI_SET_KEYBIT",
                request_code_write!(UINPUT_IOCTL_BASE, NR_UI_SET_KEYBIT, int),
                0x4004_5565,
            ),
            (
                "UI_SET_RELBIT",
                request_code_write!(UINPUT_IOCTL_BASE, NR_UI_SET_RELBIT, int),
                0x4004_5566,
            ),
            (
                "UI_SET_ABSBIT",
                request_code_write!(UINPUT_IOCTL_BASE, NR_UI_SET_ABSBIT, int),
                0x4004_5567,
            ),
            (
                "UI_SET_PROPBIT",
                request_code_write!(UINPUT_IOCTL_BASE, NR_UI_SET_PROPBIT, int),
                0x4004_556e,
            ),
            (
                "UI_GET_SYSNAME(64)",
                request_code_read!(UINPUT_IOCTL_BASE, NR_UI_GET_SYSNAME, 64),
                0x8040_552c,
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}: got {got:#x}, header says {want:#x}");
        }
    }

    #[test]
    fn evdev_request_codes_match_the_kernel_headers() {
        let long = size_of::<libc::c_ulong>();
        let cases: [(&str, Req, Req); 8] = [
            (
                "EVIOCGID",
                request_code_read!(EVDEV_IOCTL_BASE, NR_EVIOCGID, size_of::<libc::input_id>()),
                0x8008_4502,
            ),
            (
                "EVIOCGNAME(256)",
                request_code_read!(EVDEV_IOCTL_BASE, NR_EVIOCGNAME, 256),
                0x8100_4506,
            ),
            (
                "EVIOCGPROP(4)",
                request_code_read!(EVDEV_IOCTL_BASE, NR_EVIOCGPROP, 4),
                0x8004_4509,
            ),
            (
                "EVIOCGBIT(0, 4)",
                request_code_read!(EVDEV_IOCTL_BASE, NR_EVIOCGBIT_BASE, 4),
                0x8004_4520,
            ),
            (
                "EVIOCGBIT(EV_KEY, 96)",
                request_code_read!(EVDEV_IOCTL_BASE, NR_EVIOCGBIT_BASE + 1, 12 * long),
                0x8060_4521,
            ),
            (
                "EVIOCGBIT(EV_ABS, 8)",
                request_code_read!(EVDEV_IOCTL_BASE, NR_EVIOCGBIT_BASE + 3, long),
                0x8008_4523,
            ),
            (
                "EVIOCGABS(ABS_X)",
                request_code_read!(
                    EVDEV_IOCTL_BASE,
                    NR_EVIOCGABS_BASE,
                    size_of::<libc::input_absinfo>()
                ),
                0x8018_4540,
            ),
            (
                "EVIOCGABS(ABS_Y)",
                request_code_read!(
                    EVDEV_IOCTL_BASE,
                    NR_EVIOCGABS_BASE + 1,
                    size_of::<libc::input_absinfo>()
                ),
                0x8018_4541,
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}: got {got:#x}, header says {want:#x}");
        }
    }

    #[test]
    fn struct_layouts_match_the_kernel_headers() {
        assert_eq!(size_of::<libc::input_id>(), 8);
        assert_eq!(size_of::<libc::input_absinfo>(), 24);

        assert_eq!(size_of::<libc::uinput_setup>(), 92);
        assert_eq!(offset_of!(libc::uinput_setup, id), 0);
        assert_eq!(offset_of!(libc::uinput_setup, name), 8);
        assert_eq!(offset_of!(libc::uinput_setup, ff_effects_max), 88);

        assert_eq!(size_of::<libc::uinput_abs_setup>(), 28);
        assert_eq!(offset_of!(libc::uinput_abs_setup, code), 0);
        assert_eq!(offset_of!(libc::uinput_abs_setup, absinfo), 4);

        assert_eq!(size_of::<libc::input_event>(), 24);
        assert_eq!(offset_of!(libc::input_event, type_), 16);
        assert_eq!(offset_of!(libc::input_event, code), 18);
        assert_eq!(offset_of!(libc::input_event, value), 20);
    }
}
