//! A session's directories on the host. Paths are built only from the typed
//! `SessionId` (a UUID), never from request input.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use berth_common::SessionId;

use crate::config::Config;
use crate::resources::volumes;

/// `sessions/<id>` (mounted at /berth), `sockets/<id>` (at /tmp/sockets),
/// `logs/<id>` (at /var/log/berth), and `volumes/<id>`, the mount point of
/// the user's data for runtimes that have a user volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPaths {
    pub session: PathBuf,
    pub sockets: PathBuf,
    pub logs: PathBuf,
    pub volume: PathBuf,
}

pub const CONFIG_FILE: &str = "config.json";

impl SessionPaths {
    pub fn new(config: &Config, id: SessionId) -> Self {
        let name = id.to_string();
        Self {
            session: config.sessions_dir().join(&name),
            sockets: config.sockets_dir().join(&name),
            logs: config.logs_dir().join(&name),
            volume: config.volumes_dir().join(&name),
        }
    }

    pub fn config_json(&self) -> PathBuf {
        self.session.join(CONFIG_FILE)
    }

    pub fn create(&self) -> io::Result<()> {
        for dir in [&self.session, &self.sockets, &self.logs] {
            fs::create_dir_all(dir)?;
            // The container's app may run as any user; the state root (0700)
            // is what keeps other host users out.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
        fs::create_dir_all(self.volume.parent().unwrap_or(&self.volume))?;
        volumes::create_mount_point(&self.volume)
    }

    /// Removes all four; missing ones are fine (teardown is idempotent). The
    /// volume mount point is unmounted and removed only when empty: user data
    /// is never deleted.
    pub fn remove(&self) -> io::Result<()> {
        volumes::remove_mount_point(&self.volume).map_err(io::Error::other)?;
        for dir in [&self.session, &self.sockets, &self.logs] {
            match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn exist(&self) -> bool {
        [&self.session, &self.sockets, &self.logs, &self.volume]
            .iter()
            .any(|d| d.exists())
    }
}

/// A relative path that stays inside its directory: no `..`, no root, no
/// empty or odd components. For paths that come from configuration rows.
pub fn check_relative_name(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && path.len() <= 255
        && !path.contains('\0')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("{path:?} must be a relative path inside the session directory (no '..', no leading '/')"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_accepted() {
        assert!(check_relative_name("ready").is_ok());
        assert!(check_relative_name("state/ready").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x", "a\0b"] {
            assert!(check_relative_name(bad).is_err(), "{bad:?}");
        }
    }
}
