//! In-process windows: exact counts per key, in sharded maps.
//!
//! `pingora-limits`' `Rate` was measured for this and not used: its count-min sketch adds the
//! counts of colliding keys. With its default 4x1024 table and one request from each of 1,000
//! keys, 15.6% of keys read more than their own count (up to 4); with 10,000 keys every key
//! does (up to 16), so innocent clients would be refused. It also counts refused
//! requests too (so a client over the limit stays locked out through the next window), and its
//! windows start at the first request rather than on a shared clock. A sharded map is exact;
//! a shard's lock is held for a few arithmetic operations, and stale keys are swept as a shard
//! grows.

use super::window::{Outcome, Window};
use crate::shards::Shards;
use std::collections::HashMap;

#[derive(Default)]
struct Shard {
    windows: HashMap<u64, Window>,
    /// Sweep stale keys when the map reaches this size.
    sweep_at: usize,
}

#[derive(Default)]
pub struct LocalWindows {
    shards: Shards<Shard>,
}

impl LocalWindows {
    pub fn hit(&self, key: u64, now_ms: u64, window_ms: u64, allowance: u64) -> Outcome {
        let mut shard = self.shards.lock(key);
        if shard.windows.len() >= shard.sweep_at {
            let index = now_ms / window_ms;
            shard.windows.retain(|_, w| w.index + 1 >= index);
            shard.sweep_at = (shard.windows.len() * 2).max(1024);
        }
        shard
            .windows
            .entry(key)
            .or_default()
            .hit(now_ms, window_ms, allowance)
    }

    /// Keys held, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().windows.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_exact_and_independent() {
        let w = LocalWindows::default();
        for key in 0..10_000u64 {
            assert!(w.hit(key, 5_000, 1000, 1).allowed);
        }
        // Every one of 10,000 keys has its own count: no collisions.
        assert!((0..10_000u64).all(|key| !w.hit(key, 5_001, 1000, 1).allowed));
    }

    #[test]
    fn stale_keys_are_swept() {
        let w = LocalWindows::default();
        for key in 0..100_000u64 {
            w.hit(key, 1_000, 1000, 10);
        }
        for key in 0..(crate::shards::SHARDS as u64 * 1024) {
            w.hit(1_000_000 + key, 60_000, 1000, 10);
        }
        assert!(w.len() < 100_000, "{}", w.len());
    }
}
