//! The three devices of one session, created all-or-nothing.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::device::{DeviceKind, DeviceNumber, UinputConfig, VirtualDevice};
use crate::error::UinputError;

/// Absolute pointer, relative mouse and keyboard of one session. Every list this type returns is
/// in that order, which is also the order of the fds in the hand-off.
#[derive(Debug)]
pub struct SessionDevices {
    pub absolute: VirtualDevice,
    pub relative: VirtualDevice,
    pub keyboard: VirtualDevice,
}

impl SessionDevices {
    /// Creates the three devices through `uinput_path`, named with the optional `tag` (e.g. the
    /// session id). If one fails, those already made are destroyed before the error returns.
    pub fn create(uinput_path: impl AsRef<Path>, tag: Option<&str>) -> Result<Self, UinputError> {
        Self::create_with(&UinputConfig::with_uinput_path(uinput_path.as_ref()), tag)
    }

    pub fn create_with(config: &UinputConfig, tag: Option<&str>) -> Result<Self, UinputError> {
        // Check the tag once up front so a bad one fails before any device exists.
        for kind in DeviceKind::ALL {
            kind.device_name(tag)?;
        }
        // A `?` below drops the devices already created, and dropping destroys them.
        let absolute = VirtualDevice::create_with(config, DeviceKind::AbsolutePointer, tag)?;
        let relative = VirtualDevice::create_with(config, DeviceKind::RelativeMouse, tag)?;
        let keyboard = VirtualDevice::create_with(config, DeviceKind::Keyboard, tag)?;
        Ok(Self {
            absolute,
            relative,
            keyboard,
        })
    }

    pub fn devices(&self) -> [&VirtualDevice; 3] {
        [&self.absolute, &self.relative, &self.keyboard]
    }

    /// The `/dev/input/eventN` nodes to map into the container.
    pub fn event_nodes(&self) -> [&Path; 3] {
        self.devices().map(VirtualDevice::event_node)
    }

    /// The device numbers of [`Self::event_nodes`], in the same order: what the container's
    /// device cgroup may allow.
    pub fn event_node_numbers(&self) -> [DeviceNumber; 3] {
        self.devices().map(VirtualDevice::event_node_number)
    }

    /// The uinput fds to hand to the session's app.
    pub fn fds(&self) -> [BorrowedFd<'_>; 3] {
        self.devices().map(AsFd::as_fd)
    }

    /// Destroys all three devices (each is attempted) and returns the first failure.
    pub fn destroy(self) -> Result<(), UinputError> {
        let absolute = self.absolute.destroy();
        let relative = self.relative.destroy();
        let keyboard = self.keyboard.destroy();
        absolute.and(relative).and(keyboard)
    }
}
