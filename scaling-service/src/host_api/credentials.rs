//! Host credentials this replica has already checked, by hash. Every host call
//! used to look its credential up in the database first; claims and
//! `running` reports are two of an assign's round trips, so a known
//! credential skips that lookup. An entry is forgotten as soon as this replica
//! hears that its host changed (a revoked or re-issued credential, a new
//! status, a deleted row: the `host_events` triggers announce each), when the
//! replica's LISTEN connection is re-established (it may have missed such a
//! change), and in any case after [`TRUSTED_FOR`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_common::HostId;

/// A checked credential is trusted this long without a database read, at
/// most: the bound on a revocation this replica did not hear about.
const TRUSTED_FOR: Duration = Duration::from_secs(30);
/// Entries kept at most (two per host at a reconnect); past it all are
/// dropped and re-checked on use, so forged credentials cannot grow memory.
const MAX_KNOWN: usize = 50_000;

#[derive(Default)]
pub(crate) struct KnownCredentials {
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    by_hash: HashMap<String, (HostId, Instant)>,
    by_host: HashMap<HostId, Vec<String>>,
    /// Counts forgettings: a check that began before one may have read what
    /// it revoked, so its answer is not remembered.
    epoch: u64,
}

/// Where a database check of a credential began (see [`KnownCredentials::remember`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(u64);

/// Counts only: credential hashes stay out of logs.
impl std::fmt::Debug for KnownCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownCredentials")
            .field("known", &self.lock().by_hash.len())
            .finish()
    }
}

impl KnownCredentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host whose credential hashes to `sha256_hex` if checked
    /// recently; otherwise the epoch to check it in.
    pub(crate) fn host_of(&self, sha256_hex: &str) -> Result<HostId, Epoch> {
        let known = self.lock();
        match known.by_hash.get(sha256_hex) {
            Some((host, checked)) if checked.elapsed() < TRUSTED_FOR => Ok(host.clone()),
            _ => Err(Epoch(known.epoch)),
        }
    }

    /// Records a credential the database confirmed as `host`'s in a check
    /// begun at `since`, unless something was forgotten meanwhile.
    pub(crate) fn remember(&self, sha256_hex: String, host: HostId, since: Epoch) {
        let mut known = self.lock();
        if known.epoch != since.0 {
            return;
        }
        if known.by_hash.len() >= MAX_KNOWN {
            known.by_hash.clear();
            known.by_host.clear();
        }
        let hashes = known.by_host.entry(host.clone()).or_default();
        if !hashes.contains(&sha256_hex) {
            hashes.push(sha256_hex.clone());
        }
        known.by_hash.insert(sha256_hex, (host, Instant::now()));
    }

    /// Something about `host` changed: its credentials are checked again.
    pub(crate) fn forget_host(&self, host: &HostId) {
        let mut known = self.lock();
        known.epoch += 1;
        for hash in known.by_host.remove(host).unwrap_or_default() {
            known.by_hash.remove(&hash);
        }
    }

    /// Changes may have gone unheard: every credential is checked again.
    pub(crate) fn forget_all(&self) {
        let mut known = self.lock();
        known.epoch += 1;
        known.by_hash.clear();
        known.by_host.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> HostId {
        HostId::parse(id.to_owned()).unwrap()
    }

    #[test]
    fn a_remembered_credential_names_its_host_until_its_host_changes() {
        let known = KnownCredentials::default();
        let epoch = known.host_of("aa").unwrap_err();
        known.remember("aa".into(), host("h-1"), epoch);
        known.remember("bb".into(), host("h-2"), epoch);
        assert_eq!(known.host_of("aa").ok(), Some(host("h-1")));
        known.forget_host(&host("h-1"));
        assert_eq!(known.host_of("aa").ok(), None);
        assert_eq!(known.host_of("bb").ok(), Some(host("h-2")));
        known.forget_all();
        assert_eq!(known.host_of("bb").ok(), None);
    }

    #[test]
    fn a_check_that_overlapped_a_forgetting_is_not_remembered() {
        let known = KnownCredentials::default();
        let began = known.host_of("aa").unwrap_err();
        // The credential was revoked while the check read the old row.
        known.forget_host(&host("h-1"));
        known.remember("aa".into(), host("h-1"), began);
        assert_eq!(known.host_of("aa").ok(), None);
    }

    #[test]
    fn too_many_credentials_are_all_forgotten_not_grown() {
        let known = KnownCredentials::default();
        let epoch = known.host_of("").unwrap_err();
        for i in 0..MAX_KNOWN + 1 {
            known.remember(format!("{i:064x}"), host("h-1"), epoch);
        }
        assert_eq!(known.lock().by_hash.len(), 1);
        assert_eq!(known.lock().by_host[&host("h-1")].len(), 1);
    }
}
