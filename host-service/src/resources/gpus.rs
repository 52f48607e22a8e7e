//! GPUs are a host resource like TTYs and ports: a session of a GPU runtime
//! gets specific device ids, recorded in its `berth.gpus` label, adopted
//! after a restart and released at teardown; two sessions never share one,
//! and a session that cannot have what its runtime asks for is not started.

use std::collections::BTreeSet;

/// What a runtime asks for (`runtimes.gpus`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuNeed {
    #[default]
    None,
    Count(u8),
    /// Every GPU of the host: one such session per host.
    All,
}

impl GpuNeed {
    /// `"0"`, a count, or `"all"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => Ok(GpuNeed::All),
            n => match n.parse::<u8>() {
                Ok(0) => Ok(GpuNeed::None),
                Ok(n) => Ok(GpuNeed::Count(n)),
                Err(_) => Err(format!("{s:?} is not a GPU count or \"all\"")),
            },
        }
    }

    pub fn wants_any(self) -> bool {
        self != GpuNeed::None
    }
}

/// How a container is given its GPUs (`runtimes.gpu_driver`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuDriver {
    /// Docker's `nvidia` device request (the NVIDIA Container Toolkit).
    #[default]
    Nvidia,
    /// Container Device Interface names `<kind>=<id>`, e.g. `nvidia.com/gpu=0`.
    Cdi { kind: String },
}

impl GpuDriver {
    /// `"nvidia"` or `"cdi:<vendor>/<class>"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "nvidia" => Ok(GpuDriver::Nvidia),
            other => {
                let kind = other.strip_prefix("cdi:").unwrap_or("");
                let valid = kind.split_once('/').is_some_and(|(vendor, class)| {
                    !vendor.is_empty()
                        && !class.is_empty()
                        && kind
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"./-_".contains(&b))
                });
                if valid {
                    Ok(GpuDriver::Cdi {
                        kind: kind.to_owned(),
                    })
                } else {
                    Err(format!(
                        "{s:?} is not \"nvidia\" or \"cdi:<vendor>/<class>\" (e.g. cdi:nvidia.com/gpu)"
                    ))
                }
            }
        }
    }
}

/// The host's GPUs and which are taken.
#[derive(Debug, Default)]
pub struct GpuAllocator {
    all: Vec<String>,
    in_use: BTreeSet<String>,
}

impl GpuAllocator {
    pub fn new(ids: Vec<String>) -> Self {
        Self {
            all: ids,
            in_use: BTreeSet::new(),
        }
    }

    pub fn count(&self) -> usize {
        self.all.len()
    }

    pub fn free(&self) -> usize {
        self.all.len() - self.in_use.len()
    }

    /// Every GPU id of the host.
    pub fn ids(&self) -> &[String] {
        &self.all
    }

    /// Device ids for `need`, in the host's order; `None` when there are not
    /// enough free (nothing is taken then).
    pub fn allocate(&mut self, need: GpuNeed) -> Option<Vec<String>> {
        let free: Vec<&String> = self
            .all
            .iter()
            .filter(|id| !self.in_use.contains(*id))
            .collect();
        let wanted = match need {
            GpuNeed::None => return Some(Vec::new()),
            GpuNeed::Count(n) => usize::from(n),
            GpuNeed::All if free.len() == self.all.len() && !self.all.is_empty() => self.all.len(),
            GpuNeed::All => return None,
        };
        if free.len() < wanted {
            return None;
        }
        let ids: Vec<String> = free.into_iter().take(wanted).cloned().collect();
        self.in_use.extend(ids.iter().cloned());
        Some(ids)
    }

    /// Marks `ids` taken (adopting a running session); false, taking none,
    /// if one is not this host's or is taken.
    pub fn reserve(&mut self, ids: &[String]) -> bool {
        let ok = ids
            .iter()
            .all(|id| self.all.contains(id) && !self.in_use.contains(id));
        if ok {
            self.in_use.extend(ids.iter().cloned());
        }
        ok
    }

    pub fn release(&mut self, ids: &[String]) {
        for id in ids {
            self.in_use.remove(id);
        }
    }
}

/// The host's GPU ids: `BERTH_GPUS` as given (`0,1,…`), none for `none`, or
/// for `auto` the NVIDIA device nodes present (`/dev/nvidia<N>` → `N`).
pub fn discover(setting: &str) -> Vec<String> {
    match setting.trim() {
        "none" | "" => Vec::new(),
        "auto" => {
            let mut ids: Vec<u32> = std::fs::read_dir("/dev")
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("nvidia")?
                        .parse::<u32>()
                        .ok()
                })
                .collect();
            ids.sort_unstable();
            ids.into_iter().map(|n| n.to_string()).collect()
        }
        list => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sessions_get_their_own_gpus_and_give_them_back() {
        let mut gpus = GpuAllocator::new(ids(&["0", "1", "2"]));
        let a = gpus.allocate(GpuNeed::Count(2)).unwrap();
        assert_eq!(a, ids(&["0", "1"]));
        assert_eq!(gpus.allocate(GpuNeed::Count(2)), None, "only one is left");
        let b = gpus.allocate(GpuNeed::Count(1)).unwrap();
        assert_eq!(b, ids(&["2"]), "never a GPU already taken");
        assert_eq!(gpus.allocate(GpuNeed::All), None);
        gpus.release(&a);
        gpus.release(&b);
        assert_eq!(gpus.allocate(GpuNeed::All).unwrap(), ids(&["0", "1", "2"]));
        assert_eq!(gpus.allocate(GpuNeed::Count(1)), None);
        assert_eq!(gpus.allocate(GpuNeed::None), Some(vec![]));
    }

    #[test]
    fn adoption_reserves_exactly_what_labels_say() {
        let mut gpus = GpuAllocator::new(ids(&["0", "1"]));
        assert!(gpus.reserve(&ids(&["1"])));
        assert!(!gpus.reserve(&ids(&["1"])), "taken twice");
        assert!(!gpus.reserve(&ids(&["0", "7"])), "not this host's");
        assert_eq!(gpus.allocate(GpuNeed::Count(1)).unwrap(), ids(&["0"]));
        assert_eq!(
            GpuAllocator::new(vec![]).allocate(GpuNeed::All),
            None,
            "a host without GPUs"
        );
    }

    #[test]
    fn settings_parse() {
        assert_eq!(GpuNeed::parse("0").unwrap(), GpuNeed::None);
        assert_eq!(GpuNeed::parse("2").unwrap(), GpuNeed::Count(2));
        assert_eq!(GpuNeed::parse("all").unwrap(), GpuNeed::All);
        assert!(GpuNeed::parse("-1").is_err());
        assert_eq!(GpuDriver::parse("nvidia").unwrap(), GpuDriver::Nvidia);
        assert_eq!(
            GpuDriver::parse("cdi:nvidia.com/gpu").unwrap(),
            GpuDriver::Cdi {
                kind: "nvidia.com/gpu".into()
            }
        );
        for bad in ["cdi:", "cdi:gpu", "amd", "cdi:a/b c"] {
            assert!(GpuDriver::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(discover("0, 1"), ids(&["0", "1"]));
        assert!(discover("none").is_empty());
    }
}
