//! Per-user persistent data: `<BERTH_USER_DATA_ROOT>/<sha256 of the user id>`
//! (the id is never used as a path), mounted in each session of that user.
//!
//! Warm containers exist before their user is known, so each one gets an
//! empty mount point `<state>/volumes/<session id>`, bind-mounted into the
//! container with `rslave` propagation. Finishing the session for its user
//! bind-mounts that user's directory onto the mount point, and the mount
//! appears inside the already running container. Teardown unmounts it and
//! removes only the empty mount point: user data is never deleted, and no
//! session ever sees another user's directory.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};

use crate::runtime::UserVolume;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("preparing {path} for user volumes: {source}; the daemon must run as root in the host's mount namespace (no ProtectSystem= or PrivateMounts= in its unit)")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating the user's data directory {path}: {source}; check that BERTH_USER_DATA_ROOT exists and is writable by root")]
    UserDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a plain directory; refusing to mount it (remove or fix it by hand)")]
    NotADirectory(PathBuf),
    #[error("mounting the user's data at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing the volume mount point {path}: {source}; it is left in place (never deleted recursively)")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where users' data lives, and where each session's mount point is.
#[derive(Clone, Debug)]
pub struct UserData {
    root: PathBuf,
    mounts: PathBuf,
}

impl UserData {
    /// Makes `mounts` a shared mount (a bind mount onto itself if it is not a
    /// mount point yet), so mounts made under it later reach the containers.
    /// Idempotent across daemon restarts.
    pub fn prepare(root: &Path, mounts: &Path) -> Result<Self, VolumeError> {
        let prepare = |source| VolumeError::Prepare {
            path: mounts.to_owned(),
            source,
        };
        let meta = fs::metadata(root).map_err(|source| VolumeError::UserDir {
            path: root.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(VolumeError::NotADirectory(root.to_owned()));
        }
        fs::create_dir_all(mounts).map_err(prepare)?;
        let mounts = fs::canonicalize(mounts).map_err(prepare)?;
        if !is_mount_point(&mounts).map_err(prepare)? {
            mount(
                Some(&mounts),
                &mounts,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| prepare(e.into()))?;
        }
        mount(
            None::<&str>,
            &mounts,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| prepare(e.into()))?;
        Ok(Self {
            root: root.to_owned(),
            mounts,
        })
    }

    /// The user's directory: a hash names it, so no user id can reach a path.
    pub fn user_dir(&self, user_id: &str) -> PathBuf {
        self.root
            .join(hex::encode(Sha256::digest(user_id.as_bytes())))
    }

    /// Creates the user's directory if needed (0700, owned by the app's
    /// uid:gid) and mounts it on `mount_point`.
    pub fn attach(
        &self,
        user_id: &str,
        volume: &UserVolume,
        mount_point: &Path,
    ) -> Result<(), VolumeError> {
        let dir = self.user_dir(user_id);
        let user_dir = |source| VolumeError::UserDir {
            path: dir.clone(),
            source,
        };
        match fs::create_dir(&dir) {
            Ok(()) => {
                std::os::unix::fs::chown(&dir, Some(volume.uid), Some(volume.gid))
                    .map_err(user_dir)?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(user_dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(user_dir(e)),
        }
        // Never follow a symlink someone planted in the root.
        let meta = fs::symlink_metadata(&dir).map_err(user_dir)?;
        if !meta.is_dir() {
            return Err(VolumeError::NotADirectory(dir));
        }
        let mounted = |e: nix::Error| VolumeError::Mount {
            path: mount_point.to_owned(),
            source: e.into(),
        };
        mount(
            Some(&dir),
            mount_point,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mounted)?;
        mount(
            None::<&str>,
            mount_point,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(mounted)
    }

    pub fn mounts_dir(&self) -> &Path {
        &self.mounts
    }
}

/// Creates an empty mount point (before the container that binds it).
pub fn create_mount_point(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => fs::set_permissions(path, fs::Permissions::from_mode(0o755)),
    }
}

/// Unmounts whatever is on `path` and removes the then empty directory.
/// Never recursive: if anything is still inside, it stays (and is reported).
pub fn remove_mount_point(path: &Path) -> Result<(), VolumeError> {
    // EINVAL: not a mount point; ENOENT: already gone. Both are fine.
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(VolumeError::Remove {
                path: path.to_owned(),
                source: e.into(),
            })
        }
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VolumeError::Remove {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether `path` (canonical) is the mount point of some mount.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| Path::new(&unescape_mountinfo(point)) == path))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_dirs_are_hashes_under_the_root() {
        let data = UserData {
            root: PathBuf::from("/srv/berth-users"),
            mounts: PathBuf::from("/var/lib/berth/volumes"),
        };
        for user in ["alice", "../../etc", "auth0|123", "", "a/b"] {
            let dir = data.user_dir(user);
            assert_eq!(dir.parent(), Some(Path::new("/srv/berth-users")));
            assert_eq!(dir.file_name().unwrap().len(), 64);
        }
        assert_ne!(data.user_dir("alice"), data.user_dir("bob"));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn removing_a_mount_point_never_deletes_contents() {
        let tmp = std::env::temp_dir().join(format!("berth-vol-{}", std::process::id()));
        fs::create_dir_all(tmp.join("kept")).unwrap();
        fs::write(tmp.join("kept/file"), b"data").unwrap();
        assert!(remove_mount_point(&tmp.join("kept")).is_err());
        assert!(tmp.join("kept/file").exists());
        fs::create_dir_all(tmp.join("empty")).unwrap();
        remove_mount_point(&tmp.join("empty")).unwrap();
        remove_mount_point(&tmp.join("empty")).unwrap();
        fs::remove_dir_all(&tmp).unwrap();
    }
}
