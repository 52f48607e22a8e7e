//! A session's virtual input devices (absolute pointer, relative mouse,
//! keyboard), made through `/dev/uinput` by the `berth-uinput` crate. Their
//! event nodes are mapped into the container, and their fds are handed to the
//! app over `uinput.sock` in the session's sockets directory with SCM_RIGHTS —
//! on every connection, so a restarted app gets its devices back.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use berth_common::SessionId;
use berth_uinput::{SessionDevices, UinputError};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::config::UinputMode;
use crate::resources::devices::InputNode;

pub const SOCKET_NAME: &str = "uinput.sock";
pub const UINPUT_PATH: &str = "/dev/uinput";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("creating input devices: {0}")]
    Devices(#[from] UinputError),
    #[error("serving input devices on {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BERTH_UINPUT=on but {0}")]
    Required(UinputError),
}

/// Whether sessions get input devices, given the mode and this machine.
pub fn enabled(mode: UinputMode) -> Result<bool, InputError> {
    match mode {
        UinputMode::Off => Ok(false),
        UinputMode::Auto => Ok(berth_uinput::uinput_available(UINPUT_PATH)),
        UinputMode::On => berth_uinput::check_uinput(UINPUT_PATH)
            .map(|()| true)
            .map_err(InputError::Required),
    }
}

#[derive(Debug)]
pub struct SessionInput {
    devices: SessionDevices,
    server: JoinHandle<()>,
}

impl SessionInput {
    /// Creates the three devices and starts serving their fds on
    /// `<sockets_dir>/uinput.sock`. Must run inside the tokio runtime.
    pub fn create(session: SessionId, sockets_dir: &Path) -> Result<Self, InputError> {
        let tag = session.to_string();
        let devices = SessionDevices::create(UINPUT_PATH, Some(&tag[..8]))?;
        let path = sockets_dir.join(SOCKET_NAME);
        let socket_error = |source| InputError::Socket {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(socket_error)?;
        let fds: Vec<OwnedFd> = devices
            .fds()
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<_, _>>()
            .map_err(socket_error)?;
        let server = tokio::spawn(serve_fds(listener, fds));
        Ok(Self { devices, server })
    }

    pub fn event_nodes(&self) -> Vec<&Path> {
        self.devices.event_nodes().to_vec()
    }

    /// The event nodes with their device numbers, for the container's
    /// device mappings and cgroup rules.
    pub fn input_nodes(&self) -> Vec<InputNode<'_>> {
        self.devices
            .devices()
            .into_iter()
            .map(|device| InputNode {
                path: device.event_node(),
                number: device.event_node_number(),
            })
            .collect()
    }

    /// Stops serving and destroys the devices (their nodes disappear).
    pub fn destroy(self) -> Result<(), UinputError> {
        self.server.abort();
        self.devices.destroy()
    }
}

async fn serve_fds(listener: UnixListener, fds: Vec<OwnedFd>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        // Order is the contract: absolute, relative, keyboard.
        if let Err(error) =
            berth_uinput::send_fds(&stream, &borrowed, b"absolute,relative,keyboard")
        {
            tracing::warn!(%error, "handing input device fds to the session app failed");
        }
    }
}
