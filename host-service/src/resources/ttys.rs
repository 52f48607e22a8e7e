//! TTY numbers from a bounded range (Whist used 10–63), unique per session,
//! mapped into the session's container as `/dev/ttyN`.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use rand::seq::IteratorRandom;

#[derive(Debug)]
pub struct TtyAllocator {
    range: RangeInclusive<u8>,
    in_use: BTreeSet<u8>,
}

impl TtyAllocator {
    pub fn new(range: RangeInclusive<u8>) -> Self {
        Self {
            range,
            in_use: BTreeSet::new(),
        }
    }

    /// A free TTY number, chosen at random so a just-released one is not
    /// handed straight to the next session; `None` when all are taken.
    pub fn allocate(&mut self) -> Option<u8> {
        let tty = self
            .range
            .clone()
            .filter(|n| !self.in_use.contains(n))
            .choose(&mut rand::thread_rng())?;
        self.in_use.insert(tty);
        Some(tty)
    }

    /// Marks `tty` taken (adopting a running session); false if it is outside
    /// the range or already taken.
    pub fn reserve(&mut self, tty: u8) -> bool {
        self.range.contains(&tty) && self.in_use.insert(tty)
    }

    pub fn release(&mut self, tty: u8) {
        self.in_use.remove(&tty);
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

/// The device node of a TTY number.
pub fn device_path(tty: u8) -> String {
    format!("/dev/tty{tty}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_number_once_until_released() {
        let mut ttys = TtyAllocator::new(10..=13);
        let mut got: Vec<u8> = (0..4).map(|_| ttys.allocate().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![10, 11, 12, 13]);
        assert_eq!(ttys.allocate(), None, "the range is exhausted");
        ttys.release(12);
        assert_eq!(ttys.allocate(), Some(12));
    }

    #[test]
    fn reserve_refuses_taken_and_out_of_range_numbers() {
        let mut ttys = TtyAllocator::new(10..=63);
        assert!(ttys.reserve(20));
        assert!(!ttys.reserve(20));
        assert!(!ttys.reserve(9));
        assert!(!ttys.reserve(64));
        assert_eq!(ttys.in_use(), 1);
        assert_eq!(device_path(20), "/dev/tty20");
    }
}
