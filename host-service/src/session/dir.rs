//! A session's directories on the host. Paths are built only from the typed
//! `SessionId` (a UUID), never from request input.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use berth_common::SessionId;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::Config;
use crate::resources::volumes;

/// `sessions/<id>` (mounted at /berth), `sockets/<id>` (at /tmp/sockets),
/// `logs/<id>` (at /var/log/berth), and `volumes/<id>`, the mount point of
/// the user's data for runtimes that have a user volume. The first three are
/// the session's to write, so each is a tmpfs of `storage_mib`: filling one
/// fails the session's own writes, never the host's disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPaths {
    pub session: PathBuf,
    pub sockets: PathBuf,
    pub logs: PathBuf,
    pub volume: PathBuf,
    /// `facts/<id>`: session.json and warning.json, the daemon's to write.
    pub facts: PathBuf,
    storage_mib: u32,
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
            facts: config.facts_dir().join(&name),
            storage_mib: config.session_storage_mib,
        }
    }

    pub fn config_json(&self) -> PathBuf {
        self.session.join(CONFIG_FILE)
    }

    pub fn create(&self) -> io::Result<()> {
        for dir in [&self.session, &self.sockets, &self.logs] {
            fs::create_dir_all(dir)?;
            if !is_mount_point(dir)? {
                // The container's app may run as any user; the state root
                // (0700) is what keeps other host users out.
                let options = format!("size={}m,mode=0755", self.storage_mib);
                mount(
                    Some("tmpfs"),
                    dir.as_path(),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options.as_str()),
                )
                .map_err(|e| {
                    io::Error::other(format!(
                        "mounting a {} MiB tmpfs on {}: {e}",
                        self.storage_mib,
                        dir.display()
                    ))
                })?;
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
        super::facts::prepare(&self.facts)?;
        fs::create_dir_all(self.volume.parent().unwrap_or(&self.volume))?;
        volumes::create_mount_point(&self.volume)
    }

    /// Removes all four; missing ones are fine (teardown is idempotent). The
    /// volume mount point is unmounted and removed only when empty: user data
    /// is never deleted.
    pub fn remove(&self) -> io::Result<()> {
        volumes::remove_mount_point(&self.volume).map_err(io::Error::other)?;
        for dir in [&self.session, &self.sockets, &self.logs] {
            remove_capped_dir(dir)?;
        }
        match fs::remove_dir_all(&self.facts) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn exist(&self) -> bool {
        [
            &self.session,
            &self.sockets,
            &self.logs,
            &self.volume,
            &self.facts,
        ]
        .iter()
        .any(|d| d.exists())
    }
}

/// Unmounts a session directory's tmpfs (if mounted) and removes the
/// directory; a missing one is fine. The path is the daemon's own
/// (`<state>/<kind>/<uuid>`): what the container planted inside goes with the
/// tmpfs, and the unmount follows no link.
pub fn remove_capped_dir(dir: &Path) -> io::Result<()> {
    match umount2(dir, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(io::Error::other(format!(
                "unmounting {}: {e}",
                dir.display()
            )))
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `dir` is the root of a mount (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    Ok(fs::symlink_metadata(dir)?.dev() != fs::symlink_metadata(parent)?.dev())
}

/// Whether `relative` (checked by `runtime::check_relative_name`) names a regular
/// file under `dir`, resolved one component at a time without following a
/// single symlink: a container that plants links in its directory learns
/// nothing about the host and cannot make the daemon look elsewhere.
pub fn regular_file_beneath(dir: &Path, relative: &str) -> bool {
    use nix::fcntl::{openat, AtFlags, OFlag};
    use nix::sys::stat::{fstatat, Mode, SFlag};
    let Ok(mut at) = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let components: Vec<&std::ffi::OsStr> = Path::new(relative)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = components.split_last() else {
        return false;
    };
    for name in parents {
        match openat(
            &at,
            *name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(next) => at = next,
            Err(_) => return false,
        }
    }
    fstatat(&at, *last, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_found_only_without_links_on_the_way() {
        let dir = std::env::temp_dir().join(format!("berth-dir-{}", uuid::Uuid::new_v4()));
        let outside = std::env::temp_dir().join(format!("berth-outside-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(dir.join("state")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("ready"), b"").unwrap();
        fs::write(dir.join("state/ready"), b"").unwrap();
        assert!(regular_file_beneath(&dir, "state/ready"));
        assert!(!regular_file_beneath(&dir, "state/missing"));
        std::os::unix::fs::symlink(outside.join("ready"), dir.join("ready")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("linked")).unwrap();
        assert!(
            !regular_file_beneath(&dir, "ready"),
            "a link to a file is not the file"
        );
        assert!(
            !regular_file_beneath(&dir, "linked/ready"),
            "a linked directory is not entered"
        );
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
