//! The event types, codes and properties of <linux/input-event-codes.h> that Berth uses.
//! (The `libc` crate carries the structs but not these numbers.)

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const EV_MSC: u16 = 0x04;
pub const EV_REP: u16 = 0x14;

pub const SYN_REPORT: u16 = 0;

pub const KEY_ESC: u16 = 1;
pub const KEY_A: u16 = 30;
pub const KEY_H: u16 = 35;
pub const KEY_B: u16 = 48;
pub const KEY_LEFTALT: u16 = 56;
/// The PC keyboard's Print Screen key, which the kernel also treats as magic SysRq.
pub const KEY_SYSRQ: u16 = 99;
pub const KEY_POWER: u16 = 116;
pub const KEY_SLEEP: u16 = 142;
pub const KEY_WAKEUP: u16 = 143;
pub const KEY_SUSPEND: u16 = 205;
/// "AC Print": X maps it to Print as well, so it stands in for Print Screen (see KEY_SYSRQ).
pub const KEY_PRINT: u16 = 210;
pub const KEY_BATTERY: u16 = 236;
pub const KEY_BLUETOOTH: u16 = 237;
pub const KEY_WLAN: u16 = 238;
pub const KEY_UWB: u16 = 239;
/// Also KEY_WIMAX.
pub const KEY_WWAN: u16 = 246;
pub const KEY_RFKILL: u16 = 247;
/// The last code of the contiguous block of real keyboard keys (248).
pub const KEY_MICMUTE: u16 = 248;
pub const KEY_POWER2: u16 = 0x164;
pub const KEY_RESTART: u16 = 0x198;
pub const KEY_MAX: u16 = 0x2ff;

pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
pub const BTN_SIDE: u16 = 0x113;
pub const BTN_EXTRA: u16 = 0x114;
pub const BTN_TOUCH: u16 = 0x14a;

pub const REL_X: u16 = 0x00;
pub const REL_Y: u16 = 0x01;
pub const REL_HWHEEL: u16 = 0x06;
pub const REL_WHEEL: u16 = 0x08;
pub const REL_MAX: u16 = 0x0f;

pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
pub const ABS_MAX: u16 = 0x3f;

pub const INPUT_PROP_POINTER: u16 = 0x00;
pub const INPUT_PROP_DIRECT: u16 = 0x01;
pub const INPUT_PROP_MAX: u16 = 0x1f;

pub const EV_MAX: u16 = 0x1f;

pub const BUS_USB: u16 = 0x03;
pub const BUS_VIRTUAL: u16 = 0x06;
