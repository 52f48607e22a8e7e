//! Files that others read (config.json, keys) are replaced atomically: temp
//! file in the same directory → fsync → rename → fsync the directory, so a
//! reader sees the old file or the new one, never a torn one, even after a crash.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode)?.sync()
}

/// [`write_atomically`] without its last step: when this returns, readers see
/// the complete new file, but the rename survives a crash only after
/// [`Replaced::sync`]. For callers with something to do meanwhile (the host
/// waits for the app that reads the file).
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<Replaced> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A dot-prefixed temp name: readers that watch for `name` never match it.
    // The directory may be writable by someone else (a session's container
    // sees its directory as /berth), so the name is unguessable and the file
    // is created exclusively without following links: a planted symlink makes
    // the open fail instead of redirecting a root write. The rename then
    // replaces whatever `name` is (a planted link included) without following it.
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // Before the rename: a crash must never leave `name` pointing at
        // content that is not on disk yet.
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| Replaced {
        dir: dir.to_owned(),
    })
}

/// A file put in place by [`replace`] whose directory entry may not be on
/// disk yet.
#[must_use = "the rename is not durable until sync() returns"]
#[derive(Debug)]
pub struct Replaced {
    dir: PathBuf,
}

impl Replaced {
    /// Makes the rename durable (fsync of the directory).
    pub fn sync(self) -> io::Result<()> {
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn planted_symlinks_redirect_nothing() {
        let dir = std::env::temp_dir().join(format!("berth-atomic-{}", uuid::Uuid::new_v4()));
        let outside = std::env::temp_dir().join(format!("berth-victim-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(&outside, b"untouched").unwrap();
        // At the name itself and at the temp name an older version used.
        std::os::unix::fs::symlink(&outside, dir.join("config.json")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join(".config.json.tmp")).unwrap();
        write_atomically(&dir.join("config.json"), b"{}", 0o644).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"untouched");
        let written = fs::symlink_metadata(dir.join("config.json")).unwrap();
        assert!(
            written.file_type().is_file(),
            "the link was replaced, not followed"
        );
        assert_eq!(fs::read(dir.join("config.json")).unwrap(), b"{}");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&outside).unwrap();
    }

    #[test]
    fn replaces_content_with_the_requested_mode_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("berth-atomic-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        write_atomically(&path, b"{\"a\":1}", 0o640).unwrap();
        write_atomically(&path, b"{\"b\":2}", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"b\":2}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaced_file_is_visible_before_the_directory_sync() {
        let dir = std::env::temp_dir().join(format!("berth-atomic-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let replaced = replace(&path, b"{\"c\":3}", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"c\":3}");
        assert!(!dir.join(".config.json.tmp").exists());
        replaced.sync().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
