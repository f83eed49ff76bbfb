//! Entries by cache key, in sharded maps grouped by primary key: the memory tier's answers and
//! the disk tier's index. Grouping the variants of one primary key (one URI, as `Vary` splits
//! it) lets an invalidation of the URI remove every variant at once (RFC 9111 §4.4).

use pingora_cache::key::{CacheHashKey, HashBinary};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockWriteGuard};

pub const SHARDS: usize = 16;

/// The variants stored under one primary key, by variance.
type Group<T> = Vec<(Option<HashBinary>, Arc<T>)>;
type Shard<T> = RwLock<HashMap<HashBinary, Group<T>>>;

pub struct Table<T> {
    shards: Box<[Shard<T>]>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl<T> Table<T> {
    fn shard(&self, primary: &HashBinary) -> &Shard<T> {
        &self.shards[usize::from(primary[0]) % SHARDS]
    }

    /// The shard of `primary`, locked for a change.
    fn write(&self, primary: &HashBinary) -> RwLockWriteGuard<'_, HashMap<HashBinary, Group<T>>> {
        self.shard(primary)
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &impl CacheHashKey) -> Option<Arc<T>> {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let shard = self
            .shard(&primary)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let group = shard.get(&primary)?;
        group
            .iter()
            .find(|(v, _)| *v == variance)
            .map(|(_, o)| Arc::clone(o))
    }

    /// Put `value` in place of the variant's, or beside the other variants; the one replaced.
    pub fn insert(&self, key: &impl CacheHashKey, value: Arc<T>) -> Option<Arc<T>> {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.write(&primary);
        let group = shard.entry(primary).or_default();
        match group.iter_mut().find(|(v, _)| *v == variance) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                group.push((variance, value));
                None
            }
        }
    }

    /// Put `value` only where the variant has none: whether it was put.
    pub fn insert_new(&self, key: &impl CacheHashKey, value: Arc<T>) -> bool {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.write(&primary);
        let group = shard.entry(primary).or_default();
        if group.iter().any(|(v, _)| *v == variance) {
            return false;
        }
        group.push((variance, value));
        true
    }

    /// Replace the variant's value by what `change` makes of it, if it is there.
    pub fn update(&self, key: &impl CacheHashKey, change: impl FnOnce(&T) -> T) -> bool {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.write(&primary);
        let found = shard
            .get_mut(&primary)
            .and_then(|g| g.iter_mut().find(|(v, _)| *v == variance));
        match found {
            Some((_, value)) => {
                *value = Arc::new(change(value));
                true
            }
            None => false,
        }
    }

    /// Remove one variant; the value removed.
    pub fn remove(&self, key: &impl CacheHashKey) -> Option<Arc<T>> {
        self.remove_if(key, |_| true)
    }

    /// Remove one variant if `which` picks its value.
    pub fn remove_if(&self, key: &impl CacheHashKey, which: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.write(&primary);
        let group = shard.get_mut(&primary)?;
        let at = group
            .iter()
            .position(|(v, value)| *v == variance && which(value))?;
        let (_, old) = group.swap_remove(at);
        if group.is_empty() {
            shard.remove(&primary);
        }
        Some(old)
    }

    /// Remove every variant stored under `primary`, with their variances.
    pub fn remove_all(&self, primary: &HashBinary) -> Vec<(Option<HashBinary>, Arc<T>)> {
        self.write(primary).remove(primary).unwrap_or_default()
    }

    /// Every value `pick` keeps.
    pub fn select(&self, pick: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        let mut picked = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (_, value) in shard.values().flatten() {
                if pick(value) {
                    picked.push(Arc::clone(value));
                }
            }
        }
        picked
    }

    /// Remove every value.
    pub fn drain(&self) -> Vec<Arc<T>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            all.extend(
                shard
                    .drain()
                    .flat_map(|(_, g)| g.into_iter().map(|(_, v)| v)),
            );
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::CacheKey;

    fn key(path: &str, variance: Option<&str>) -> CacheKey {
        let mut key = CacheKey::new(path, "");
        if let Some(v) = variance {
            key.set_variance_key(pingora_cache::key::hash_key(v));
        }
        key
    }

    #[test]
    fn variants_of_a_primary_key_are_kept_and_removed_together() {
        let t = Table::default();
        assert!(t.insert(&key("/a", None), Arc::new(1)).is_none());
        assert!(t.insert(&key("/a", Some("gzip")), Arc::new(2)).is_none());
        assert_eq!(
            t.insert(&key("/a", Some("gzip")), Arc::new(3)).as_deref(),
            Some(&2)
        );
        assert!(!t.insert_new(&key("/a", None), Arc::new(9)));
        assert!(t.insert_new(&key("/b", None), Arc::new(4)));
        assert_eq!(t.get(&key("/a", Some("gzip"))).as_deref(), Some(&3));
        assert!(t.update(&key("/b", None), |v| v + 1));
        assert_eq!(t.select(|v| *v > 2).len(), 2);
        assert_eq!(t.remove_all(&key("/a", None).primary_bin()).len(), 2);
        assert!(t.get(&key("/a", None)).is_none());
        assert!(t.remove_if(&key("/b", None), |v| *v == 4).is_none());
        assert_eq!(t.remove(&key("/b", None)).as_deref(), Some(&5));
        assert!(t.drain().is_empty());
    }
}
