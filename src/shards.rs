//! Per-key state spread over shards by key hash, so requests for different keys rarely wait
//! on one lock; each lock is held for a few operations.

use std::sync::{Mutex, MutexGuard};

/// Per-key state, in [`SHARDS`] locked maps.
pub struct Shards<T> {
    shards: Box<[Mutex<T>]>,
}

pub const SHARDS: usize = 64;

impl<T: Default> Default for Shards<T> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<T> Shards<T> {
    /// The shard holding `key`. A panic while it was held cannot leave it inconsistent beyond
    /// a count, so a poisoned lock is used as is.
    pub fn lock(&self, key: u64) -> MutexGuard<'_, T> {
        self.shards[key as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Mutex<T>> {
        self.shards.iter()
    }
}
