//! Typed ids and statuses. Statuses map one-to-one onto the Postgres enums of
//! the schema, so an impossible state cannot be written.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A session's id (a UUID, also the container's `berth.session` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "db", derive(sqlx::Type), sqlx(transparent))]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid session id {0:?}: expected a hyphenated UUID (36 characters)")]
pub struct InvalidSessionId(String);

impl std::str::FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated form: ids end up in paths and labels.
        let parsed = (s.len() == 36).then(|| Uuid::try_parse(s).ok()).flatten();
        parsed
            .map(Self)
            .ok_or_else(|| InvalidSessionId(s.chars().take(64).collect()))
    }
}

/// A host's id: the EC2 instance id (or a local name). Restricted to
/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,47}` so it is safe in notification payloads,
/// labels and paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "db", derive(sqlx::Type), sqlx(transparent))]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid host id {0:?}: use 1 to 48 characters from [A-Za-z0-9_.-], starting with a letter or digit (an EC2 instance id such as i-0abc123 fits)")]
pub struct InvalidHostId(String);

impl HostId {
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidHostId> {
        let s = s.into();
        // First a letter or digit: no ".", "..", "-flag" or hidden names.
        let ok = s.len() <= 48
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidHostId(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostId {
    type Error = InvalidHostId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<HostId> for String {
    fn from(id: HostId) -> String {
        id.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! pg_enum {
    ($(#[$meta:meta])* $name:ident, $pg:literal, [$($variant:ident),+ $(,)?]) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "db", derive(sqlx::Type), sqlx(type_name = $pg, rename_all = "SCREAMING_SNAKE_CASE"))]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => pg_enum!(@upper $variant)),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} {s:?}", $pg))
            }
        }
    };
    (@upper Launching) => { "LAUNCHING" };
    (@upper PreConnection) => { "PRE_CONNECTION" };
    (@upper Active) => { "ACTIVE" };
    (@upper Draining) => { "DRAINING" };
    (@upper Terminating) => { "TERMINATING" };
    (@upper Terminated) => { "TERMINATED" };
    (@upper Waiting) => { "WAITING" };
    (@upper Allocated) => { "ALLOCATED" };
    (@upper Connecting) => { "CONNECTING" };
    (@upper Running) => { "RUNNING" };
    (@upper Dying) => { "DYING" };
    (@upper Candidate) => { "CANDIDATE" };
    (@upper Current) => { "CURRENT" };
    (@upper Retired) => { "RETIRED" };
    (@upper Failed) => { "FAILED" };
    (@upper Pending) => { "PENDING" };
    (@upper Launched) => { "LAUNCHED" };
    (@upper Buffering) => { "BUFFERING" };
    (@upper Ready) => { "READY" };
    (@upper Swapped) => { "SWAPPED" };
    (@upper Reaped) => { "REAPED" };
    (@upper Deleted) => { "DELETED" };
    (@upper Ended) => { "ENDED" };
    (@upper Unreachable) => { "UNREACHABLE" };
    (@upper HostLost) => { "HOST_LOST" };
    (@upper Lifetime) => { "LIFETIME" };
    (@upper Interrupted) => { "INTERRUPTED" };
}

pg_enum!(
    /// Where a host is in its life: the scaler inserts it LAUNCHING/PRE_CONNECTION,
    /// the host makes itself ACTIVE, draining ends in TERMINATED. An ACTIVE host
    /// that stops heartbeating is UNREACHABLE (no new assigns, its sessions left
    /// alone) until it beats again or is proven gone.
    HostStatus, "host_status",
    [Launching, PreConnection, Active, Draining, Terminating, Terminated, Unreachable]
);
pg_enum!(
    /// A session: warm (WAITING) → handed to a user (ALLOCATED) → the host is
    /// finishing it (CONNECTING) → the app serves (RUNNING); DYING while torn down.
    SessionStatus, "session_status",
    [Waiting, Allocated, Connecting, Running, Dying]
);
pg_enum!(
    ImageStatus,
    "image_status",
    [Candidate, Current, Retired, Failed]
);
pg_enum!(
    /// How a user's session ended: idle too long (REAPED), asked to end by its
    /// owner (DELETED), broken (FAILED), its host gone (HOST_LOST: the instance
    /// terminated, or unreachable past its grace), its runtime's lifetime over
    /// (LIFETIME), its host taken back by EC2 (INTERRUPTED: a spot
    /// interruption), or otherwise over (ENDED: the app exited, the host drained).
    SessionOutcome, "session_outcome",
    [Reaped, Deleted, Failed, Ended, HostLost, Lifetime, Interrupted]
);
pg_enum!(LaunchState, "launch_state", [Pending, Launched, Failed]);
pg_enum!(
    DeployState,
    "deploy_state",
    [Buffering, Ready, Swapped, Failed]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_restricted_to_safe_characters() {
        assert!(HostId::parse("i-0123456789abcdef0").is_ok());
        assert!(HostId::parse("local-1.a_b").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "-rf",
            ".hidden",
            "../etc",
            "a/b",
            "a b",
            "x;DROP",
            &"a".repeat(49),
            "é",
        ] {
            assert!(HostId::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn session_ids_accept_only_the_canonical_form() {
        let id = SessionId::new();
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
        assert!("../../etc/passwd".parse::<SessionId>().is_err());
        assert!(id.0.simple().to_string().parse::<SessionId>().is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_database_names() {
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>().unwrap(), *s);
        }
        assert_eq!(HostStatus::PreConnection.as_str(), "PRE_CONNECTION");
        assert!("running".parse::<SessionStatus>().is_err());
    }
}
