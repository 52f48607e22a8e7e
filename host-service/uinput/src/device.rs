//! One virtual input device: created through `/dev/uinput`, found as `/dev/input/eventN`,
//! destroyed with `UI_DEV_DESTROY`.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::codes::*;
use crate::error::{open_hint, UinputError};
use crate::evdev::c_buf_to_string;
use crate::event::{self, InputEvent};
use crate::ioctl;

pub const DEFAULT_UINPUT_PATH: &str = "/dev/uinput";
/// Where the kernel lists devices created through uinput (`…/inputN/eventM`).
pub const DEFAULT_SYSFS_INPUT_DIR: &str = "/sys/devices/virtual/input";
pub const DEFAULT_DEV_INPUT_DIR: &str = "/dev/input";
pub const DEFAULT_ABS_MAX: i32 = 65535;
/// The event node appears after `UI_DEV_CREATE` returns, once evdev has bound the new device and
/// devtmpfs has made the node; on an idle machine that takes milliseconds, under emulation or
/// load it can take far longer, hence a generous bound.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(2);
const NODE_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The bus the devices claim. Whist shipped BUS_USB and Xorg/libinput treated its devices as
/// ordinary USB input; keep what is proven.
pub const BUS_TYPE: u16 = BUS_USB;
/// Unregistered vendor id ("BE57" ~ Berth). Only used to tell Berth's devices apart (udev rules,
/// debugging), never to match a real driver.
pub const VENDOR_ID: u16 = 0xbe57;
pub const DEVICE_VERSION: u16 = 1;
const NAME_PREFIX: &str = "Berth";
/// `UINPUT_MAX_NAME_SIZE` (80) including the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::UINPUT_MAX_NAME_SIZE - 1;

/// Keys the keyboard never advertises, although they lie in KEY_ESC..=KEY_MICMUTE (or are
/// listed for completeness beyond it). The code writing to the keyboard is the session's app,
/// which is hostile, while the device is a real input device of the *host*: handlers on the host
/// bind to every keyboard that advertises these keys, whatever container it is mapped into.
/// The kernel drops events for keys a device does not advertise (input_handle_event ignores
/// codes not in its key bits), so leaving them out is what makes them impossible to send.
/// * KEY_SYSRQ: the kernel's magic SysRq handler acts on Alt+SysRq+<letter> from any keyboard
///   (reboot, crash, kill all tasks, remount read-only) unless kernel.sysrq is 0. Print Screen is
///   this key on PC keyboards; clients send KEY_PRINT for it, which X also maps to Print.
/// * KEY_POWER, KEY_POWER2, KEY_SLEEP, KEY_SUSPEND, KEY_RESTART: systemd-logind (and acpid)
///   on the host power off, suspend, hibernate or reboot the machine on these, from any keyboard
///   tagged power-switch; KEY_WAKEUP and KEY_BATTERY are power management keys a desktop in a
///   container has no use for.
/// * KEY_BLUETOOTH, KEY_WLAN, KEY_UWB, KEY_WWAN (KEY_WIMAX), KEY_RFKILL: the kernel's
///   rfkill-input handler switches the host's radios on these.
pub const KEYBOARD_EXCLUDED_KEYS: &[u16] = &[
    KEY_SYSRQ,
    KEY_POWER,
    KEY_POWER2,
    KEY_SLEEP,
    KEY_SUSPEND,
    KEY_RESTART,
    KEY_WAKEUP,
    KEY_BATTERY,
    KEY_BLUETOOTH,
    KEY_WLAN,
    KEY_UWB,
    KEY_WWAN,
    KEY_RFKILL,
];

/// The three devices of a streamed desktop session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Client cursor positions scaled to 0..=abs_max: ABS_X/ABS_Y plus the three main buttons.
    AbsolutePointer,
    /// Relative motion (pointer lock, games) and the scroll wheels.
    RelativeMouse,
    Keyboard,
}

impl DeviceKind {
    /// The hand-off order: absolute, relative, keyboard.
    pub const ALL: [DeviceKind; 3] = [
        DeviceKind::AbsolutePointer,
        DeviceKind::RelativeMouse,
        DeviceKind::Keyboard,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::AbsolutePointer => "absolute pointer",
            DeviceKind::RelativeMouse => "relative mouse",
            DeviceKind::Keyboard => "keyboard",
        }
    }

    pub fn product_id(self) -> u16 {
        match self {
            DeviceKind::AbsolutePointer => 0x0001,
            DeviceKind::RelativeMouse => 0x0002,
            DeviceKind::Keyboard => 0x0003,
        }
    }

    /// What the device advertises. Choices made for a streamed desktop:
    /// * the absolute pointer has mouse buttons and no BTN_TOUCH/BTN_TOOL_*, and the POINTER
    ///   property: udev and libinput then classify it as an absolute *mouse* (like qemu's
    ///   usb-tablet) instead of a tablet or touchscreen, so no udev rule is needed (Whist needed
    ///   one for its pen-style device);
    /// * the relative mouse does not advertise REL_WHEEL_HI_RES: libinput ignores REL_WHEEL on
    ///   devices that have it, and the client sends classic wheel clicks;
    /// * the keyboard has the real keys (KEY_ESC..=KEY_MICMUTE) except
    ///   [`KEYBOARD_EXCLUDED_KEYS`] (SysRq, power, sleep, radio keys: they act on the host), and
    ///   neither EV_REP nor EV_MSC: the client streams its own repeats, and kernel autorepeat
    ///   would double them.
    pub fn capabilities(self, abs_max: i32) -> Capabilities {
        match self {
            DeviceKind::AbsolutePointer => Capabilities {
                event_types: vec![EV_SYN, EV_KEY, EV_ABS],
                keys: vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE],
                rel_axes: Vec::new(),
                abs_axes: vec![
                    AbsAxis {
                        code: ABS_X,
                        min: 0,
                        max: abs_max,
                    },
                    AbsAxis {
                        code: ABS_Y,
                        min: 0,
                        max: abs_max,
                    },
                ],
                properties: vec![INPUT_PROP_POINTER],
            },
            DeviceKind::RelativeMouse => Capabilities {
                event_types: vec![EV_SYN, EV_KEY, EV_REL],
                keys: vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA],
                rel_axes: vec![REL_X, REL_Y, REL_HWHEEL, REL_WHEEL],
                abs_axes: Vec::new(),
                properties: Vec::new(),
            },
            DeviceKind::Keyboard => Capabilities {
                event_types: vec![EV_SYN, EV_KEY],
                keys: (KEY_ESC..=KEY_MICMUTE)
                    .filter(|key| !KEYBOARD_EXCLUDED_KEYS.contains(key))
                    .collect(),
                rel_axes: Vec::new(),
                abs_axes: Vec::new(),
                properties: Vec::new(),
            },
        }
    }

    /// "Berth keyboard" or "Berth keyboard (tag)"; at most 79 bytes, printable, no NUL.
    pub fn device_name(self, tag: Option<&str>) -> Result<String, UinputError> {
        let name = match tag {
            None => format!("{NAME_PREFIX} {}", self.label()),
            Some(tag) => format!("{NAME_PREFIX} {} ({tag})", self.label()),
        };
        if let Some(tag) = tag {
            if tag.is_empty() {
                return Err(UinputError::InvalidName {
                    name,
                    reason: "has an empty tag",
                });
            }
            if tag.chars().any(char::is_control) {
                return Err(UinputError::InvalidName {
                    name,
                    reason: "contains NUL or control characters",
                });
            }
        }
        if name.len() > MAX_NAME_LEN {
            return Err(UinputError::InvalidName {
                name,
                reason: "is longer than uinput's 79 bytes (UINPUT_MAX_NAME_SIZE 80 with the NUL)",
            });
        }
        Ok(name)
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything a device advertises to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub event_types: Vec<u16>,
    pub keys: Vec<u16>,
    pub rel_axes: Vec<u16>,
    pub abs_axes: Vec<AbsAxis>,
    pub properties: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsAxis {
    pub code: u16,
    pub min: i32,
    pub max: i32,
}

/// A device number (`st_rdev` of a device node), e.g. 13:71 for /dev/input/event7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    fn from_rdev(rdev: u64) -> Self {
        Self {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }
}

/// "major:minor", as in cgroup device rules and /sys/…/dev.
impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Where the devices are made and found. The paths are parameters so tests can point them at a
/// fake tree and the daemon at a non-default uinput node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UinputConfig {
    pub uinput_path: PathBuf,
    pub sysfs_input_dir: PathBuf,
    pub dev_input_dir: PathBuf,
    /// ABS_X/ABS_Y run over 0..=abs_max.
    pub abs_max: i32,
    /// How long to wait for `/dev/input/eventN` after `UI_DEV_CREATE`.
    pub node_timeout: Duration,
}

impl Default for UinputConfig {
    fn default() -> Self {
        Self {
            uinput_path: PathBuf::from(DEFAULT_UINPUT_PATH),
            sysfs_input_dir: PathBuf::from(DEFAULT_SYSFS_INPUT_DIR),
            dev_input_dir: PathBuf::from(DEFAULT_DEV_INPUT_DIR),
            abs_max: DEFAULT_ABS_MAX,
            node_timeout: DEFAULT_NODE_TIMEOUT,
        }
    }
}

impl UinputConfig {
    pub fn with_uinput_path(uinput_path: impl Into<PathBuf>) -> Self {
        Self {
            uinput_path: uinput_path.into(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), UinputError> {
        if self.abs_max < 1 {
            return Err(UinputError::InvalidConfig {
                reason: format!(
                    "abs_max must be at least 1 (axes run over 0..=abs_max), got {}",
                    self.abs_max
                ),
            });
        }
        Ok(())
    }
}

/// A created uinput device. Dropping it destroys the device (`UI_DEV_DESTROY`, then close), even
/// when copies of the fd live in other processes; [`VirtualDevice::destroy`] does the same and
/// reports a failure.
#[derive(Debug)]
pub struct VirtualDevice {
    fd: OwnedFd,
    kind: DeviceKind,
    name: String,
    sysname: String,
    event_node: PathBuf,
    event_node_number: DeviceNumber,
    destroyed: bool,
}

impl VirtualDevice {
    /// Creates a device of `kind` through `uinput_path` with the default sysfs and /dev paths.
    pub fn create(
        uinput_path: impl AsRef<Path>,
        kind: DeviceKind,
        tag: Option<&str>,
    ) -> Result<Self, UinputError> {
        Self::create_with(
            &UinputConfig::with_uinput_path(uinput_path.as_ref()),
            kind,
            tag,
        )
    }

    pub fn create_with(
        config: &UinputConfig,
        kind: DeviceKind,
        tag: Option<&str>,
    ) -> Result<Self, UinputError> {
        config.validate()?;
        let name = kind.device_name(tag)?;
        let capabilities = kind.capabilities(config.abs_max);
        let fd = open_uinput(&config.uinput_path)?;
        // Until UI_DEV_CREATE succeeds the kernel holds only a description; closing the fd (the
        // early returns below) discards it.
        describe(fd.as_fd(), kind, &name, &capabilities)?;
        // SAFETY: `fd` is an open uinput fd owned by this function; UI_DEV_CREATE takes no argument.
        unsafe { ioctl::ui_dev_create(fd.as_raw_fd()) }.map_err(|source| UinputError::Ioctl {
            request: "UI_DEV_CREATE",
            device: name.clone(),
            source,
        })?;

        // From here on the device exists; dropping `device` on an error destroys it.
        let mut device = VirtualDevice {
            fd,
            kind,
            name,
            sysname: String::new(),
            event_node: PathBuf::new(),
            event_node_number: DeviceNumber { major: 0, minor: 0 },
            destroyed: false,
        };
        device.sysname = sysname(device.fd.as_fd(), &device.name)?;
        device.event_node = wait_for_event_node(
            &config.sysfs_input_dir,
            &config.dev_input_dir,
            &device.sysname,
            config.node_timeout,
            &device.name,
        )?;
        device.event_node_number = char_device_number(&device.event_node, &device.name)?;
        Ok(device)
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// The name the kernel reports (`EVIOCGNAME`), e.g. "Berth keyboard (3f2a)".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's name for the device, e.g. "input7".
    pub fn sysname(&self) -> &str {
        &self.sysname
    }

    /// `/dev/input/eventN`: the node to map into the container.
    pub fn event_node(&self) -> &Path {
        &self.event_node
    }

    /// The device number of [`Self::event_node`], read when the device was created: what the
    /// container's device cgroup rule allows, and nothing else.
    pub fn event_node_number(&self) -> DeviceNumber {
        self.event_node_number
    }

    pub fn write_event(&self, type_: u16, code: u16, value: i32) -> Result<(), UinputError> {
        self.write_events(&[InputEvent::new(type_, code, value)])
    }

    /// Writes several events in one `write(2)`.
    pub fn write_events(&self, events: &[InputEvent]) -> Result<(), UinputError> {
        event::write_events_named(self.fd.as_fd(), events, &self.name)
    }

    /// `EV_SYN SYN_REPORT 0`: delivers the events written since the last report.
    pub fn sync(&self) -> Result<(), UinputError> {
        self.write_events(&[InputEvent::syn_report()])
    }

    /// Destroys the device now, reporting a failure; the fd is closed either way.
    pub fn destroy(mut self) -> Result<(), UinputError> {
        self.destroyed = true;
        // SAFETY: `self.fd` is the open uinput fd of a created device; no argument.
        unsafe { ioctl::ui_dev_destroy(self.fd.as_raw_fd()) }
            .map(drop)
            .map_err(|source| UinputError::Destroy {
                device: self.name.clone(),
                source,
            })
    }
}

impl AsFd for VirtualDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for VirtualDevice {
    fn drop(&mut self) {
        if !self.destroyed {
            // Closing our fd alone would leave the device alive while a container still holds
            // a copy, so destroy it explicitly. Nothing to do about a failure here.
            // SAFETY: `self.fd` is still open (it closes after this body); no argument.
            let _ = unsafe { ioctl::ui_dev_destroy(self.fd.as_raw_fd()) };
        }
    }
}

pub(crate) fn open_uinput(path: &Path) -> Result<OwnedFd, UinputError> {
    // Write-only is all that creating and injecting need, and the fd goes to the session's app.
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| UinputError::Open {
            path: path.to_path_buf(),
            hint: open_hint(&source),
            source,
        })
}

/// Tells the kernel what the device is: UI_SET_*BIT, UI_DEV_SETUP, UI_ABS_SETUP.
fn describe(
    fd: BorrowedFd<'_>,
    kind: DeviceKind,
    name: &str,
    capabilities: &Capabilities,
) -> Result<(), UinputError> {
    let raw = fd.as_raw_fd();
    let failed = |request: &'static str| {
        move |source: Errno| UinputError::Ioctl {
            request,
            device: name.to_owned(),
            source,
        }
    };

    for &ev_type in &capabilities.event_types {
        // SAFETY: `raw` is an open uinput fd; UI_SET_EVBIT takes the event type by value.
        unsafe { ioctl::ui_set_evbit(raw, ev_type.into()) }.map_err(failed("UI_SET_EVBIT"))?;
    }
    for &key in &capabilities.keys {
        // SAFETY: as above; the key code by value.
        unsafe { ioctl::ui_set_keybit(raw, key.into()) }.map_err(failed("UI_SET_KEYBIT"))?;
    }
    for &axis in &capabilities.rel_axes {
        // SAFETY: as above; the axis code by value.
        unsafe { ioctl::ui_set_relbit(raw, axis.into()) }.map_err(failed("UI_SET_RELBIT"))?;
    }
    for axis in &capabilities.abs_axes {
        // SAFETY: as above; the axis code by value.
        unsafe { ioctl::ui_set_absbit(raw, axis.code.into()) }.map_err(failed("UI_SET_ABSBIT"))?;
    }
    for &property in &capabilities.properties {
        // SAFETY: as above; the property by value.
        unsafe { ioctl::ui_set_propbit(raw, property.into()) }.map_err(failed("UI_SET_PROPBIT"))?;
    }

    let mut setup = libc::uinput_setup {
        id: libc::input_id {
            bustype: BUS_TYPE,
            vendor: VENDOR_ID,
            product: kind.product_id(),
            version: DEVICE_VERSION,
        },
        name: [0; libc::UINPUT_MAX_NAME_SIZE],
        ff_effects_max: 0,
    };
    // `device_name` checked the length, so at least one trailing NUL remains.
    for (slot, byte) in setup.name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: `raw` is an open uinput fd; `setup` is a fully initialised `uinput_setup`, the
    // type the request encodes, and outlives the call.
    unsafe { ioctl::ui_dev_setup(raw, &setup) }.map_err(failed("UI_DEV_SETUP"))?;

    for axis in &capabilities.abs_axes {
        let abs_setup = libc::uinput_abs_setup {
            code: axis.code,
            absinfo: libc::input_absinfo {
                value: 0,
                minimum: axis.min,
                maximum: axis.max,
                fuzz: 0,
                flat: 0,
                resolution: 0,
            },
        };
        // SAFETY: `raw` is an open uinput fd; `abs_setup` is an initialised `uinput_abs_setup`,
        // the type the request encodes, and outlives the call.
        unsafe { ioctl::ui_abs_setup(raw, &abs_setup) }.map_err(failed("UI_ABS_SETUP"))?;
    }
    Ok(())
}

/// UI_GET_SYSNAME: "inputN", the directory under /sys/devices/virtual/input.
fn sysname(fd: BorrowedFd<'_>, device: &str) -> Result<String, UinputError> {
    let mut buf = [0u8; 64];
    // SAFETY: `fd` is the uinput fd of a created device; the kernel writes at most `buf.len()`
    // bytes, the size the macro encodes in the request.
    unsafe { ioctl::ui_get_sysname(fd.as_raw_fd(), &mut buf) }.map_err(|source| {
        UinputError::Ioctl {
            request: "UI_GET_SYSNAME",
            device: device.to_owned(),
            source,
        }
    })?;
    let name = c_buf_to_string(&buf);
    // The name becomes a path component below; refuse anything but a plain file name.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(UinputError::Ioctl {
            request: "UI_GET_SYSNAME",
            device: device.to_owned(),
            source: Errno::EINVAL,
        });
    }
    Ok(name)
}

/// Waits until `<sysfs_dir>/<sysname>/eventM` names the evdev handler and `<dev_dir>/eventM`
/// exists; both appear asynchronously after UI_DEV_CREATE.
pub(crate) fn wait_for_event_node(
    sysfs_dir: &Path,
    dev_dir: &Path,
    sysname: &str,
    timeout: Duration,
    device: &str,
) -> Result<PathBuf, UinputError> {
    let device_dir = sysfs_dir.join(sysname);
    let start = Instant::now();
    loop {
        let detail = match event_entry(&device_dir) {
            Ok(Some(entry)) => {
                let node = dev_dir.join(&entry);
                if node.symlink_metadata().is_ok() {
                    return Ok(node);
                }
                format!(
                    "{} names {entry} but {} does not exist",
                    device_dir.display(),
                    node.display()
                )
            }
            Ok(None) => format!("{} has no eventN entry", device_dir.display()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                format!("{} does not exist", device_dir.display())
            }
            Err(source) => {
                return Err(UinputError::Sysfs {
                    device: device.to_owned(),
                    path: device_dir,
                    source,
                })
            }
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(UinputError::EventNode {
                device: device.to_owned(),
                sysname: sysname.to_owned(),
                waited,
                detail,
            });
        }
        std::thread::sleep(NODE_POLL_INTERVAL.min(timeout - waited));
    }
}

/// The device number of the character device node `node` (not following symlinks).
pub(crate) fn char_device_number(node: &Path, device: &str) -> Result<DeviceNumber, UinputError> {
    let not_a_device = |detail: String| UinputError::EventNodeNumber {
        device: device.to_owned(),
        path: node.to_path_buf(),
        detail,
    };
    let metadata = node
        .symlink_metadata()
        .map_err(|err| not_a_device(format!("cannot be read: {err}")))?;
    if !metadata.file_type().is_char_device() {
        return Err(not_a_device(format!(
            "is not a character device ({:?})",
            metadata.file_type()
        )));
    }
    Ok(DeviceNumber::from_rdev(metadata.rdev()))
}

/// The `eventM` entry of a sysfs input device directory, if evdev has bound it yet.
fn event_entry(device_dir: &Path) -> io::Result<Option<String>> {
    for entry in std::fs::read_dir(device_dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name.strip_prefix("event") {
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(Some(name.to_owned()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::test_support::{fd_lock, TempDir};

    #[test]
    fn names_carry_the_kind_and_the_tag() {
        assert_eq!(
            DeviceKind::AbsolutePointer.device_name(None).unwrap(),
            "Berth absolute pointer"
        );
        assert_eq!(
            DeviceKind::Keyboard.device_name(Some("3f2a")).unwrap(),
            "Berth keyboard (3f2a)"
        );
    }

    #[test]
    fn names_longer_than_uinput_allows_are_errors() {
        // "Berth relative mouse (" + tag + ")" = 23 + tag bytes.
        let fits = "x".repeat(MAX_NAME_LEN - 23);
        let name = DeviceKind::RelativeMouse.device_name(Some(&fits)).unwrap();
        assert_eq!(name.len(), MAX_NAME_LEN);
        let too_long = "x".repeat(MAX_NAME_LEN - 22);
        let err = DeviceKind::RelativeMouse
            .device_name(Some(&too_long))
            .unwrap_err();
        assert!(err.to_string().contains("79 bytes"), "{err}");
        // Multi-byte characters count in bytes, as the kernel sees them.
        assert!(DeviceKind::Keyboard
            .device_name(Some(&"é".repeat(32)))
            .is_err());
    }

    #[test]
    fn tags_with_nul_or_control_characters_are_errors() {
        for tag in ["a\0b", "line\nbreak", ""] {
            assert!(
                DeviceKind::Keyboard.device_name(Some(tag)).is_err(),
                "{tag:?}"
            );
        }
    }

    #[test]
    fn capabilities_for_a_streamed_desktop() {
        let abs = DeviceKind::AbsolutePointer.capabilities(65535);
        assert_eq!(abs.event_types, [EV_SYN, EV_KEY, EV_ABS]);
        assert_eq!(
            abs.abs_axes,
            [
                AbsAxis {
                    code: ABS_X,
                    min: 0,
                    max: 65535
                },
                AbsAxis {
                    code: ABS_Y,
                    min: 0,
                    max: 65535
                }
            ]
        );
        assert!(abs.keys.contains(&BTN_LEFT) && !abs.keys.contains(&BTN_TOUCH));
        assert_eq!(abs.properties, [INPUT_PROP_POINTER]);

        let rel = DeviceKind::RelativeMouse.capabilities(65535);
        assert_eq!(rel.rel_axes, [REL_X, REL_Y, REL_HWHEEL, REL_WHEEL]);
        assert_eq!(rel.keys.len(), 5);

        let keyboard = DeviceKind::Keyboard.capabilities(65535);
        assert_eq!(keyboard.keys.first(), Some(&KEY_ESC));
        assert_eq!(keyboard.keys.last(), Some(&KEY_MICMUTE));
        assert!(!keyboard.event_types.contains(&EV_REP));
    }

    #[test]
    fn the_keyboard_cannot_press_keys_that_act_on_the_host() {
        let keys = DeviceKind::Keyboard.capabilities(65535).keys;
        for key in [
            KEY_SYSRQ,
            KEY_POWER,
            KEY_POWER2,
            KEY_SLEEP,
            KEY_WAKEUP,
            KEY_SUSPEND,
            KEY_RESTART,
            KEY_BATTERY,
            KEY_BLUETOOTH,
            KEY_WLAN,
            KEY_UWB,
            KEY_WWAN,
            KEY_RFKILL,
        ] {
            assert!(KEYBOARD_EXCLUDED_KEYS.contains(&key), "{key} not excluded");
            assert!(!keys.contains(&key), "the keyboard advertises key {key}");
        }
        // Everything else of the block stays: letters, modifiers, Print, media keys.
        let in_block = (KEY_ESC..=KEY_MICMUTE)
            .filter(|key| KEYBOARD_EXCLUDED_KEYS.contains(key))
            .count();
        assert_eq!(keys.len(), usize::from(KEY_MICMUTE) - in_block);
        for key in [KEY_A, KEY_LEFTALT, KEY_PRINT, KEY_MICMUTE] {
            assert!(keys.contains(&key), "key {key} missing");
        }
        // No other device can send a key at all beyond its mouse buttons.
        for kind in [DeviceKind::AbsolutePointer, DeviceKind::RelativeMouse] {
            let keys = kind.capabilities(65535).keys;
            assert!(keys.iter().all(|key| (BTN_LEFT..=BTN_EXTRA).contains(key)));
        }
    }

    #[test]
    fn device_numbers_come_from_character_device_nodes_only() {
        let _lock = fd_lock();
        let number = char_device_number(Path::new("/dev/null"), "t").unwrap();
        assert_eq!(number, DeviceNumber { major: 1, minor: 3 });
        assert_eq!(number.to_string(), "1:3");
        assert_eq!(
            DeviceNumber::from_rdev(libc::makedev(13, 71)).to_string(),
            "13:71"
        );
        // Minors above 255 (evdev's dynamic minors beyond event31) survive the split.
        assert_eq!(
            DeviceNumber::from_rdev(libc::makedev(13, 1030)),
            DeviceNumber {
                major: 13,
                minor: 1030
            }
        );

        let dir = TempDir::new("rdev");
        let file = dir.path().join("event3");
        fs::write(&file, b"").unwrap();
        let err = char_device_number(&file, "Berth keyboard").unwrap_err();
        assert!(err.to_string().contains("not a character device"), "{err}");
        let err = char_device_number(&dir.path().join("event4"), "t").unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }

    #[test]
    fn configured_abs_range_is_used_and_checked() {
        let caps = DeviceKind::AbsolutePointer.capabilities(4095);
        assert!(caps.abs_axes.iter().all(|axis| axis.max == 4095));
        let config = UinputConfig {
            abs_max: 0,
            ..UinputConfig::default()
        };
        let err =
            VirtualDevice::create_with(&config, DeviceKind::AbsolutePointer, None).unwrap_err();
        assert!(matches!(err, UinputError::InvalidConfig { .. }), "{err}");
    }

    #[test]
    fn missing_uinput_node_is_a_clear_error() {
        let _lock = fd_lock();
        let dir = TempDir::new("no-uinput");
        let path = dir.path().join("uinput");
        let err = VirtualDevice::create(&path, DeviceKind::Keyboard, None).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("opening {}", path.display())),
            "{message}"
        );
        assert!(message.contains("modprobe uinput"), "{message}");
    }

    #[test]
    fn a_non_uinput_file_is_rejected_by_the_first_ioctl() {
        let _lock = fd_lock();
        let dir = TempDir::new("fake-uinput");
        let path = dir.path().join("uinput");
        fs::write(&path, b"").unwrap();
        let err = VirtualDevice::create(&path, DeviceKind::Keyboard, None).unwrap_err();
        assert!(
            matches!(
                err,
                UinputError::Ioctl {
                    request: "UI_SET_EVBIT",
                    source: Errno::ENOTTY,
                    ..
                }
            ),
            "{err}"
        );
    }

    fn fake_tree(dir: &TempDir) -> (PathBuf, PathBuf) {
        let sysfs = dir.path().join("sys");
        let dev = dir.path().join("dev");
        fs::create_dir_all(sysfs.join("input7/capabilities")).unwrap();
        fs::create_dir_all(sysfs.join("input7/mouse2")).unwrap();
        fs::create_dir_all(sysfs.join("input7/eventual")).unwrap();
        fs::create_dir_all(&dev).unwrap();
        (sysfs, dev)
    }

    #[test]
    fn finds_the_event_node_in_a_fake_tree() {
        let _lock = fd_lock();
        let dir = TempDir::new("sysfs-ok");
        let (sysfs, dev) = fake_tree(&dir);
        fs::create_dir(sysfs.join("input7/event12")).unwrap();
        fs::write(dev.join("event12"), b"").unwrap();
        let node =
            wait_for_event_node(&sysfs, &dev, "input7", Duration::from_secs(1), "t").unwrap();
        assert_eq!(node, dev.join("event12"));
    }

    #[test]
    fn waits_for_an_event_node_that_appears_late() {
        let _lock = fd_lock();
        let dir = TempDir::new("sysfs-late");
        let (sysfs, dev) = fake_tree(&dir);
        let (late_sysfs, late_dev) = (sysfs.clone(), dev.clone());
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            fs::create_dir(late_sysfs.join("input7/event3")).unwrap();
            std::thread::sleep(Duration::from_millis(60));
            fs::write(late_dev.join("event3"), b"").unwrap();
        });
        let start = Instant::now();
        let node =
            wait_for_event_node(&sysfs, &dev, "input7", Duration::from_secs(2), "t").unwrap();
        maker.join().unwrap();
        assert_eq!(node, dev.join("event3"));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn gives_up_after_the_timeout_and_names_the_cause() {
        let _lock = fd_lock();
        let dir = TempDir::new("sysfs-none");
        let (sysfs, dev) = fake_tree(&dir);
        let start = Instant::now();
        let err = wait_for_event_node(
            &sysfs,
            &dev,
            "input7",
            Duration::from_millis(100),
            "Berth keyboard",
        )
        .unwrap_err();
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        let message = err.to_string();
        assert!(message.contains("has no eventN entry"), "{message}");
        assert!(message.contains("modprobe evdev"), "{message}");

        let err = wait_for_event_node(&sysfs, &dev, "input9", Duration::ZERO, "t").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
