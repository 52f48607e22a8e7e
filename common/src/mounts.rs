//! Mounts beneath a directory that is about to go: a host's state dir holds
//! one tmpfs per session directory, and removing the tree without
//! unmounting them first would leave them mounted (and the tree half there).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Unmounts (lazily, deepest first) every mount strictly beneath `dir`, as
/// `/proc/self/mounts` lists them; how many went.
pub fn unmount_beneath(dir: &Path) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/self/mounts") else {
        return 0;
    };
    let mut beneath: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|field| PathBuf::from(field.replace("\\040", " ")))
        .filter(|mount| mount.starts_with(dir) && mount != dir)
        .collect();
    beneath.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    beneath
        .iter()
        .filter(|mount| {
            let Ok(path) = CString::new(mount.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: a valid NUL-terminated path; umount2 reads it only.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) == 0 }
        })
        .count()
}
