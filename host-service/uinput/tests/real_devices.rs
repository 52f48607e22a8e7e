//! Real uinput devices on a real kernel. Where `/dev/uinput` cannot be opened each test says
//! SKIPPED on stderr and passes; `scripts/device-lane` runs them in a qemu VM with a stock Debian
//! kernel (and sets BERTH_DEVICE_LANE=1, which turns a skip into a failure).
//!
//! The tests share one lock: they count this process's fds and the kernel's input devices, so
//! they must not overlap. The lane also runs them with `--test-threads=1`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_uinput::codes::*;
use berth_uinput::{
    check_uinput, evdev, read_event, recv_fds, send_fds, write_events, DeviceKind, InputEvent,
    SessionDevices, UinputError, VirtualDevice, BUS_TYPE, DEFAULT_SYSFS_INPUT_DIR,
    DEFAULT_UINPUT_PATH, KEYBOARD_EXCLUDED_KEYS, VENDOR_ID,
};

const LANE_ENV: &str = "BERTH_DEVICE_LANE";
const CHILD_SOCKET_ENV: &str = "BERTH_UINPUT_HANDOFF_SOCKET";
const HANDOFF_PAYLOAD: &[u8] = b"berth-uinput v1: absolute,relative,keyboard";
const EVENT_TIMEOUT: Duration = Duration::from_secs(3);
const GONE_TIMEOUT: Duration = Duration::from_secs(2);

static LOCK: Mutex<()> = Mutex::new(());

/// The lock, or `None` (after saying SKIPPED) when there is no uinput here.
fn uinput_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match check_uinput(DEFAULT_UINPUT_PATH) {
        Ok(()) => Some(guard),
        Err(err) => {
            let reason = match &err {
                UinputError::Open { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            if std::env::var_os(LANE_ENV).is_some() {
                panic!("{test}: {DEFAULT_UINPUT_PATH} must exist in the device lane: {err}");
            }
            // Straight to the stderr handle: libtest captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {DEFAULT_UINPUT_PATH} absent ({reason}); run scripts/device-lane \
                 to prove this on a real kernel"
            );
            None
        }
    }
}

fn open_node(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()))
}

fn expect_events(node: &File, what: &str, expected: &[InputEvent]) {
    for want in expected {
        let got = read_event(node, EVENT_TIMEOUT)
            .unwrap_or_else(|err| panic!("{what}: {err}"))
            .unwrap_or_else(|| panic!("{what}: no event within {EVENT_TIMEOUT:?}, wanted {want}"));
        assert_eq!(got, *want, "{what}");
    }
}

fn open_fd_count() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(Iterator::count)
        .unwrap_or_else(|err| panic!("listing /proc/self/fd: {err}"))
}

fn input_devices() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(DEFAULT_SYSFS_INPUT_DIR)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Accepted {
    stream: UnixStream,
    child: Child,
}

/// Accepts the child's connection, bounded: a child that dies before connecting must fail the
/// test, not hang it.
fn accept_from(listener: &UnixListener, mut child: Child) -> Accepted {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                return Accepted { stream, child };
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("accepting the child's connection: {err}"),
        }
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "child exited ({status}) before connecting:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("child did not connect within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sysfs_dir(device: &VirtualDevice) -> PathBuf {
    Path::new(DEFAULT_SYSFS_INPUT_DIR).join(device.sysname())
}

fn sorted(mut codes: Vec<u16>) -> Vec<u16> {
    codes.sort_unstable();
    codes
}

#[test]
fn three_devices_carry_their_capabilities() {
    let Some(_lock) = uinput_or_skip("three_devices_carry_their_capabilities") else {
        return;
    };
    let devices = SessionDevices::create(DEFAULT_UINPUT_PATH, Some("lane")).unwrap();
    let nodes = devices.event_nodes();
    for (index, node) in nodes.iter().enumerate() {
        assert!(node.starts_with("/dev/input"), "{}", node.display());
        assert!(nodes[index + 1..].iter().all(|other| other != node));
    }

    for device in devices.devices() {
        let kind = device.kind();
        let caps = kind.capabilities(berth_uinput::DEFAULT_ABS_MAX);
        let what = format!("{kind} at {}", device.event_node().display());
        eprintln!("{what}: {} ({})", device.name(), device.sysname());

        let sysfs_name = fs::read_to_string(sysfs_dir(device).join("name")).unwrap();
        assert_eq!(sysfs_name.trim_end(), device.name(), "{what}");
        // The number read by stat at creation is the one the kernel gave the evdev handler
        // (…/inputN/eventM/dev), on the input major 13.
        let event_dir = sysfs_dir(device).join(device.event_node().file_name().unwrap());
        let sysfs_dev = fs::read_to_string(event_dir.join("dev")).unwrap();
        assert_eq!(
            sysfs_dev.trim_end(),
            device.event_node_number().to_string(),
            "{what}: device number"
        );
        assert_eq!(device.event_node_number().major, 13, "{what}");

        let node = open_node(device.event_node());
        assert_eq!(evdev::name(&node).unwrap(), device.name(), "{what}");
        let id = evdev::device_id(&node).unwrap();
        assert_eq!(
            (id.bustype, id.vendor, id.product),
            (BUS_TYPE, VENDOR_ID, kind.product_id()),
            "{what}"
        );
        assert_eq!(
            evdev::event_types(&node).unwrap(),
            sorted(caps.event_types.clone()),
            "{what}: event types"
        );
        assert_eq!(
            evdev::supported_codes(&node, EV_KEY).unwrap(),
            sorted(caps.keys.clone()),
            "{what}: keys"
        );
        assert_eq!(
            evdev::supported_codes(&node, EV_REL).unwrap(),
            sorted(caps.rel_axes.clone()),
            "{what}: relative axes"
        );
        assert_eq!(
            evdev::supported_codes(&node, EV_ABS).unwrap(),
            sorted(caps.abs_axes.iter().map(|axis| axis.code).collect()),
            "{what}: absolute axes"
        );
        for axis in &caps.abs_axes {
            let info = evdev::abs_info(&node, axis.code).unwrap();
            assert_eq!(
                (info.minimum, info.maximum),
                (axis.min, axis.max),
                "{what}: range of axis {:#x}",
                axis.code
            );
        }
        assert_eq!(
            evdev::properties(&node).unwrap(),
            sorted(caps.properties.clone()),
            "{what}: properties"
        );
    }
    let keyboard = open_node(devices.keyboard.event_node());
    let keys = evdev::supported_codes(&keyboard, EV_KEY).unwrap();
    assert_eq!(
        (keys.first(), keys.last()),
        (Some(&KEY_ESC), Some(&KEY_MICMUTE))
    );
    drop(keyboard);

    devices.destroy().unwrap();
}

#[test]
fn events_written_to_uinput_come_out_of_the_event_node() {
    let Some(_lock) = uinput_or_skip("events_written_to_uinput_come_out_of_the_event_node") else {
        return;
    };
    let devices = SessionDevices::create(DEFAULT_UINPUT_PATH, None).unwrap();
    let syn = InputEvent::syn_report();

    let node = open_node(devices.absolute.event_node());
    devices.absolute.write_event(EV_ABS, ABS_X, 1234).unwrap();
    devices.absolute.write_event(EV_ABS, ABS_Y, 65535).unwrap();
    devices.absolute.sync().unwrap();
    expect_events(
        &node,
        "absolute pointer",
        &[
            InputEvent::new(EV_ABS, ABS_X, 1234),
            InputEvent::new(EV_ABS, ABS_Y, 65535),
            syn,
        ],
    );
    devices.absolute.write_event(EV_KEY, BTN_LEFT, 1).unwrap();
    devices.absolute.sync().unwrap();
    expect_events(
        &node,
        "absolute pointer click",
        &[InputEvent::new(EV_KEY, BTN_LEFT, 1), syn],
    );

    let node = open_node(devices.relative.event_node());
    devices
        .relative
        .write_events(&[
            InputEvent::new(EV_REL, REL_X, 5),
            InputEvent::new(EV_REL, REL_WHEEL, -1),
            syn,
        ])
        .unwrap();
    expect_events(
        &node,
        "relative mouse",
        &[
            InputEvent::new(EV_REL, REL_X, 5),
            InputEvent::new(EV_REL, REL_WHEEL, -1),
            syn,
        ],
    );

    let node = open_node(devices.keyboard.event_node());
    devices.keyboard.write_event(EV_KEY, KEY_A, 1).unwrap();
    devices.keyboard.sync().unwrap();
    devices.keyboard.write_event(EV_KEY, KEY_A, 0).unwrap();
    devices.keyboard.sync().unwrap();
    expect_events(
        &node,
        "keyboard",
        &[
            InputEvent::new(EV_KEY, KEY_A, 1),
            syn,
            InputEvent::new(EV_KEY, KEY_A, 0),
            syn,
        ],
    );
    // Nothing else: no autorepeat, no MSC_SCAN.
    assert_eq!(read_event(&node, Duration::from_millis(300)).unwrap(), None);

    devices.destroy().unwrap();
}

#[test]
fn the_keyboard_cannot_send_sysrq_power_or_sleep_keys() {
    let Some(_lock) = uinput_or_skip("the_keyboard_cannot_send_sysrq_power_or_sleep_keys") else {
        return;
    };
    let devices = SessionDevices::create(DEFAULT_UINPUT_PATH, Some("sysrq")).unwrap();
    let node = open_node(devices.keyboard.event_node());

    // What the kernel says the keyboard has: EVIOCGBIT(EV_KEY) on its event node.
    let keys = evdev::supported_codes(&node, EV_KEY).unwrap();
    for key in [
        KEY_SYSRQ,
        KEY_POWER,
        KEY_POWER2,
        KEY_SLEEP,
        KEY_WAKEUP,
        KEY_SUSPEND,
        KEY_RESTART,
        KEY_RFKILL,
        KEY_WLAN,
    ] {
        assert!(!keys.contains(&key), "EVIOCGBIT(EV_KEY) has key {key}");
    }
    assert!(KEYBOARD_EXCLUDED_KEYS.iter().all(|key| !keys.contains(key)));
    assert!(keys.contains(&KEY_A) && keys.contains(&KEY_LEFTALT));
    eprintln!(
        "keyboard {}: {} keys; SysRq, power, sleep and wake bits clear",
        devices.keyboard.event_node().display(),
        keys.len()
    );

    // The app writes through its own copy of the uinput fd, as handed off.
    let handed_off: OwnedFd = devices.keyboard.as_fd().try_clone_to_owned().unwrap();
    let syn = InputEvent::syn_report();
    let press = |key: u16| {
        [
            InputEvent::new(EV_KEY, key, 1),
            syn,
            InputEvent::new(EV_KEY, key, 0),
            syn,
        ]
    };
    // Alt+SysRq+H (help: harmless if it ever got through), each key in its own write. The
    // kernel may reject the SysRq write or take it and drop its events; either way nothing of
    // it may come out.
    let down = |key: u16| [InputEvent::new(EV_KEY, key, 1), syn];
    let up = |key: u16| [InputEvent::new(EV_KEY, key, 0), syn];
    write_events(&handed_off, &down(KEY_LEFTALT)).unwrap();
    expect_sysrq_write(write_events(&handed_off, &press(KEY_SYSRQ)), "Alt+SysRq");
    write_events(&handed_off, &press(KEY_H)).unwrap();
    write_events(&handed_off, &up(KEY_LEFTALT)).unwrap();
    let mut only_alt_and_h = down(KEY_LEFTALT).to_vec();
    only_alt_and_h.extend(press(KEY_H));
    only_alt_and_h.extend(up(KEY_LEFTALT));
    expect_events(&node, "Alt+SysRq+H: Alt and H only", &only_alt_and_h);
    for &key in KEYBOARD_EXCLUDED_KEYS {
        expect_sysrq_write(
            write_events(&handed_off, &press(key)),
            &format!("key {key}"),
        );
    }
    assert_eq!(
        read_event(&node, Duration::from_millis(500)).unwrap(),
        None,
        "an excluded key came out of the event node"
    );
    eprintln!(
        "KEY_SYSRQ and {} other excluded keys written: no event within 500 ms",
        KEYBOARD_EXCLUDED_KEYS.len() - 1
    );

    // An allowed key through the same fd does come out.
    write_events(&handed_off, &press(KEY_A)).unwrap();
    expect_events(
        &node,
        "KEY_A",
        &[
            InputEvent::new(EV_KEY, KEY_A, 1),
            syn,
            InputEvent::new(EV_KEY, KEY_A, 0),
            syn,
        ],
    );
    eprintln!("KEY_A written: press, release");
    drop((handed_off, node));
    devices.destroy().unwrap();
}

/// A write of events holding an excluded key either fails or is taken whole (and dropped by
/// the kernel); a partial write would mean the kernel stopped at the key.
fn expect_sysrq_write(result: Result<(), UinputError>, what: &str) {
    match result {
        Ok(()) => eprintln!("{what}: write accepted"),
        Err(err @ (UinputError::Write { .. } | UinputError::ShortWrite { .. })) => {
            eprintln!("{what}: write rejected: {err}")
        }
        Err(err) => panic!("{what}: {err}"),
    }
}

/// The other half of `handed_off_fds_drive_the_devices_from_another_process`: run in a child
/// process of the test binary, it receives the three fds and writes one frame to each.
#[test]
#[ignore = "helper: runs only as the child process of the hand-off test"]
fn handoff_child() {
    let Some(socket) = std::env::var_os(CHILD_SOCKET_ENV) else {
        return;
    };
    let stream = UnixStream::connect(&socket).unwrap();
    let (fds, payload) = recv_fds(&stream, 3).unwrap();
    assert_eq!(payload, HANDOFF_PAYLOAD);
    let [absolute, relative, keyboard]: [OwnedFd; 3] = fds.try_into().unwrap();
    let syn = InputEvent::syn_report();
    write_events(&absolute, &[InputEvent::new(EV_ABS, ABS_X, 4321), syn]).unwrap();
    write_events(&relative, &[InputEvent::new(EV_REL, REL_Y, -7), syn]).unwrap();
    write_events(&keyboard, &[InputEvent::new(EV_KEY, KEY_B, 1), syn]).unwrap();
    write_events(&keyboard, &[InputEvent::new(EV_KEY, KEY_B, 0), syn]).unwrap();
    (&stream).write_all(b"done").unwrap();
}

#[test]
fn handed_off_fds_drive_the_devices_from_another_process() {
    let Some(_lock) = uinput_or_skip("handed_off_fds_drive_the_devices_from_another_process")
    else {
        return;
    };
    let devices = SessionDevices::create(DEFAULT_UINPUT_PATH, Some("handoff")).unwrap();
    let nodes: Vec<File> = devices
        .event_nodes()
        .iter()
        .map(|node| open_node(node))
        .collect();

    let socket_dir = std::env::temp_dir().join(format!("berth-uinput-lane-{}", std::process::id()));
    fs::create_dir_all(&socket_dir).unwrap();
    let socket_path = socket_dir.join("uinput.sock");
    let _ = fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path).unwrap();

    let exe = std::env::current_exe().unwrap();
    let child = Command::new(&exe)
        .args([
            "handoff_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SOCKET_ENV, &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawning {}: {err}", exe.display()));

    let Accepted { stream, child } = accept_from(&listener, child);
    send_fds(&stream, &devices.fds(), HANDOFF_PAYLOAD).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "child failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let child_out = String::from_utf8_lossy(&output.stdout);
    assert!(
        child_out.contains("test handoff_child ... ok"),
        "the child did not run the helper:\n{child_out}"
    );
    let mut ack = String::new();
    std::io::Read::read_to_string(&mut &stream, &mut ack).unwrap();
    assert_eq!(ack, "done");
    drop((stream, listener));
    fs::remove_dir_all(&socket_dir).unwrap();

    let syn = InputEvent::syn_report();
    expect_events(
        &nodes[0],
        "absolute pointer, from the child",
        &[InputEvent::new(EV_ABS, ABS_X, 4321), syn],
    );
    expect_events(
        &nodes[1],
        "relative mouse, from the child",
        &[InputEvent::new(EV_REL, REL_Y, -7), syn],
    );
    expect_events(
        &nodes[2],
        "keyboard, from the child",
        &[
            InputEvent::new(EV_KEY, KEY_B, 1),
            syn,
            InputEvent::new(EV_KEY, KEY_B, 0),
            syn,
        ],
    );
    drop(nodes);
    devices.destroy().unwrap();
}

#[test]
fn destroy_removes_the_nodes_even_while_another_fd_is_open_and_leaks_nothing() {
    let Some(_lock) =
        uinput_or_skip("destroy_removes_the_nodes_even_while_another_fd_is_open_and_leaks_nothing")
    else {
        return;
    };
    let fds_before = open_fd_count();
    let inputs_before = input_devices();

    // Explicit destroy, with a second copy of each fd open (as the session's app would hold).
    let devices = SessionDevices::create(DEFAULT_UINPUT_PATH, Some("destroy")).unwrap();
    let gone: Vec<(PathBuf, PathBuf)> = devices
        .devices()
        .iter()
        .map(|device| (device.event_node().to_path_buf(), sysfs_dir(device)))
        .collect();
    assert!(gone.iter().all(|(node, dir)| node.exists() && dir.exists()));
    let copies: Vec<OwnedFd> = devices
        .fds()
        .iter()
        .map(|fd| fd.try_clone_to_owned().unwrap())
        .collect();
    devices.destroy().unwrap();
    wait_until(
        "event nodes and sysfs dirs gone after destroy",
        GONE_TIMEOUT,
        || {
            gone.iter()
                .all(|(node, dir)| !node.exists() && !dir.exists())
        },
    );
    for copy in &copies {
        let err = write_events(copy.as_fd(), &[InputEvent::new(EV_KEY, KEY_A, 1)]);
        assert!(err.is_err(), "writing to a destroyed device must fail");
    }
    drop(copies);

    // Dropping destroys too.
    let device =
        VirtualDevice::create(DEFAULT_UINPUT_PATH, DeviceKind::Keyboard, Some("drop")).unwrap();
    let (node, dir) = (device.event_node().to_path_buf(), sysfs_dir(&device));
    drop(device);
    wait_until("event node gone after drop", GONE_TIMEOUT, || {
        !node.exists() && !dir.exists()
    });

    assert_eq!(input_devices(), inputs_before, "input devices left behind");
    assert_eq!(open_fd_count(), fds_before, "fd leak");
}

#[test]
fn creation_is_all_or_nothing() {
    let Some(_lock) = uinput_or_skip("creation_is_all_or_nothing") else {
        return;
    };
    let fds_before = open_fd_count();
    let inputs_before = input_devices();

    // The lowest free fd number, then a limit that lets the first device be made (its uinput
    // fd plus a transient fd for reading its sysfs dir) but not the second one's sysfs read:
    // the second device fails after UI_DEV_CREATE, so both cleanup paths run.
    let lowest_free = {
        let probe = File::open("/dev/null").unwrap();
        std::os::fd::AsRawFd::as_raw_fd(&probe)
    };
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `saved` is a valid, writable rlimit struct.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved) },
        0
    );
    let tight = libc::rlimit {
        rlim_cur: libc::rlim_t::try_from(lowest_free + 2).unwrap(),
        rlim_max: saved.rlim_max,
    };
    // SAFETY: `tight` is a valid rlimit; lowering the soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) }, 0);
    let result = SessionDevices::create(DEFAULT_UINPUT_PATH, Some("partial"));
    // SAFETY: `saved` holds the limits read above; restoring them is allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);

    let err = result.expect_err("creation must fail under the tight fd limit");
    eprintln!("expected failure: {err}");
    let message = err.to_string();
    assert!(message.contains("Too many open files"), "{message}");
    assert!(
        message.contains("Berth relative mouse"),
        "the second device should be the one failing: {message}"
    );
    wait_until("no device left behind", GONE_TIMEOUT, || {
        input_devices() == inputs_before
    });
    assert_eq!(open_fd_count(), fds_before, "fd leak");

    // A bad tag fails before any device exists.
    let long_tag = "x".repeat(100);
    let err = SessionDevices::create(DEFAULT_UINPUT_PATH, Some(&long_tag)).unwrap_err();
    assert!(matches!(err, UinputError::InvalidName { .. }), "{err}");
    assert_eq!(input_devices(), inputs_before);
}
