//! What a session's app can read about itself without an API call:
//! `/berth/session.json` (who it serves, where it runs, its ports, devices
//! and deadlines), written before `config.json`, and `/berth/warning.json`
//! (an end announced ahead, `null` while none is). Both live in a directory
//! of the daemon's own (`<state>/facts/<id>/`) and are bind-mounted read-only
//! over the session directory: the app cannot change them, and the daemon
//! writes them in place (a rename would leave the mount on the old file) in
//! a directory no container can write.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use berth_common::SessionId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::resources::ports::PortMapping;

pub const SESSION_FILE: &str = "session.json";
pub const WARNING_FILE: &str = "warning.json";
/// Where the files appear in the container.
pub const SESSION_FILE_IN_CONTAINER: &str = "/berth/session.json";
pub const WARNING_FILE_IN_CONTAINER: &str = "/berth/warning.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    pub session_id: SessionId,
    pub runtime: String,
    pub user_id: String,
    pub host_id: String,
    pub region: String,
    pub ports: Vec<PortMapping>,
    pub tty: Option<u8>,
    /// Input event nodes handed to the session (uinput).
    pub devices: Vec<String>,
    /// GPU device ids handed to the session.
    pub gpus: Vec<String>,
    pub deadlines: Deadlines,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    /// Idle this long (no connection, no traffic, no activity) ends it.
    pub idle_timeout_s: Option<u64>,
    /// An end is announced (warning.json) this long ahead.
    pub idle_warning_s: Option<u64>,
    pub max_lifetime_s: Option<u64>,
    /// When the lifetime ends, whatever the activity.
    pub lifetime_ends_at: Option<DateTime<Utc>>,
}

/// Why a session will end on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndReason {
    /// Idle until its idle timeout (ends as REAPED).
    Idle,
    /// Its runtime's lifetime is over (ends as LIFETIME).
    Lifetime,
    /// EC2 takes the instance back (a spot interruption; ends as INTERRUPTED).
    Interruption,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "IDLE",
            EndReason::Lifetime => "LIFETIME",
            EndReason::Interruption => "INTERRUPTION",
        }
    }
}

/// `/berth/warning.json` while an end is announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndWarning {
    pub ends_at: DateTime<Utc>,
    pub reason: EndReason,
    pub message: String,
}

/// Both files as (host path, container path), to be mounted read-only.
pub fn mounts(dir: &Path) -> [(std::path::PathBuf, &'static str); 2] {
    [
        (dir.join(SESSION_FILE), SESSION_FILE_IN_CONTAINER),
        (dir.join(WARNING_FILE), WARNING_FILE_IN_CONTAINER),
    ]
}

/// The directory with both files, `null` in each until there is more to say.
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for file in [SESSION_FILE, WARNING_FILE] {
        write_in_place(&dir.join(file), b"null\n")?;
    }
    Ok(())
}

pub fn write_session(dir: &Path, facts: &SessionFacts) -> io::Result<()> {
    write_in_place(&dir.join(SESSION_FILE), &to_json(facts)?)
}

pub fn write_warning(dir: &Path, warning: Option<&EndWarning>) -> io::Result<()> {
    write_in_place(&dir.join(WARNING_FILE), &to_json(&warning)?)
}

/// The facts written for the session, if any (a restarted daemon's source
/// for its deadlines; the directory is the daemon's, not the container's).
pub fn read_session(dir: &Path) -> Option<SessionFacts> {
    serde_json::from_slice(&fs::read(dir.join(SESSION_FILE)).ok()?).ok()
}

fn to_json(value: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Truncates and rewrites `path` (same inode, so the container's read-only
/// bind mount of it sees the new content), never following a link.
fn write_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_rewritten_in_place_and_read_back() {
        let dir = std::env::temp_dir().join(format!("berth-facts-{}", uuid::Uuid::new_v4()));
        prepare(&dir).unwrap();
        assert_eq!(fs::read(dir.join(WARNING_FILE)).unwrap(), b"null\n");
        assert_eq!(read_session(&dir), None);
        use std::os::unix::fs::MetadataExt;
        let inode = fs::metadata(dir.join(SESSION_FILE)).unwrap().ino();
        let facts = SessionFacts {
            session_id: SessionId(uuid::Uuid::new_v4()),
            runtime: "desktop".into(),
            user_id: "alice".into(),
            host_id: "h-1".into(),
            region: "local".into(),
            ports: vec![],
            tty: Some(12),
            devices: vec![],
            gpus: vec![],
            deadlines: Deadlines {
                idle_timeout_s: Some(60),
                idle_warning_s: Some(10),
                max_lifetime_s: None,
                lifetime_ends_at: None,
            },
        };
        write_session(&dir, &facts).unwrap();
        assert_eq!(read_session(&dir), Some(facts));
        assert_eq!(
            fs::metadata(dir.join(SESSION_FILE)).unwrap().ino(),
            inode,
            "the mounted inode stays"
        );
        let warning = EndWarning {
            ends_at: Utc::now(),
            reason: EndReason::Lifetime,
            message: "m".into(),
        };
        write_warning(&dir, Some(&warning)).unwrap();
        let read: Option<EndWarning> =
            serde_json::from_slice(&fs::read(dir.join(WARNING_FILE)).unwrap()).unwrap();
        assert_eq!(read, Some(warning));
        fs::remove_dir_all(&dir).unwrap();
    }
}
