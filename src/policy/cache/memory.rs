//! The memory tier: whole answers (header and body) in sharded maps, bounded by a byte budget
//! that Pingora's sharded LRU eviction manager keeps.
//!
//! Pingora's own `MemCache` is marked for testing: one global lock, no budget. Here an entry is
//! written whole (a miss is buffered until its end, and dropped past `max_object_size`), so a
//! lookup never sees half a body; concurrent misses for one key wait on the cache lock instead
//! of reading a write in progress. The eviction manager is told each entry's size when it is
//! stored and which entries were read; when the budget is passed it names the least recently
//! used, and they are removed here.

use super::about::About;
use super::table::{Table, SHARDS};
use crate::metrics::METRICS;
use bytes::Bytes;
use pingora::Result;
use pingora_cache::eviction::lru::Manager;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::CacheMeta;
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;
use std::time::SystemTime;

const TIER: &str = "memory";

/// Shards of Pingora's LRU: as many as the map's.
pub type Eviction = Manager<SHARDS>;

/// A stored answer: its meta serialized as Pingora's storages keep it (the meta cannot be
/// cloned), its body, and what a purge selects it by.
pub struct Object {
    pub meta: (Vec<u8>, Vec<u8>),
    pub body: Bytes,
    pub about: Arc<About>,
}

pub struct MemoryTier {
    table: Table<Object>,
    pub max_object_size: usize,
    /// Bytes of stored bodies, in `pylon_cache_size_bytes{tier="memory"}`.
    bytes: IntGauge,
    entries: IntGauge,
    pub evictions: IntCounter,
}

impl MemoryTier {
    pub fn new(max_object_size: usize) -> MemoryTier {
        MemoryTier {
            table: Table::default(),
            max_object_size,
            bytes: METRICS.cache_size.with_label_values(&[TIER]),
            entries: METRICS.cache_entries.with_label_values(&[TIER]),
            evictions: METRICS.cache_evictions.with_label_values(&[TIER]),
        }
    }

    /// A removed entry leaves the gauges.
    fn forget(&self, object: &Object) {
        self.bytes.sub(object.body.len() as i64);
        self.entries.dec();
    }

    pub fn get(&self, key: &impl CacheHashKey) -> Option<Arc<Object>> {
        self.table.get(key)
    }

    /// Put `object` in place of the variant's, or beside the other variants.
    pub fn insert(&self, key: &impl CacheHashKey, object: Object) {
        self.bytes.add(object.body.len() as i64);
        match self.table.insert(key, Arc::new(object)) {
            Some(old) => self.bytes.sub(old.body.len() as i64),
            None => self.entries.inc(),
        }
    }

    /// Change a stored variant's meta, keeping its body.
    pub fn replace_meta(&self, key: &impl CacheHashKey, meta: (Vec<u8>, Vec<u8>)) -> bool {
        self.table.update(key, |object| Object {
            meta,
            body: object.body.clone(),
            about: Arc::clone(&object.about),
        })
    }

    /// Mark a stored variant stale from `at`, keeping it to revalidate or serve stale.
    pub fn expire(&self, key: &impl CacheHashKey, at: SystemTime) -> Result<bool> {
        let Some(object) = self.get(key) else {
            return Ok(false);
        };
        let mut meta = CacheMeta::deserialize(&object.meta.0, &object.meta.1)?;
        meta.expire_at(at);
        Ok(self.replace_meta(key, meta.serialize()?))
    }

    /// What every stored entry was stored for, those `pick` keeps: for a purge.
    pub fn select(&self, pick: impl Fn(&About) -> bool) -> Vec<Arc<About>> {
        let picked = self.table.select(|object| pick(&object.about));
        picked.iter().map(|o| Arc::clone(&o.about)).collect()
    }

    /// Remove one variant; whether it was there.
    pub fn remove(&self, key: &impl CacheHashKey) -> bool {
        let removed = self.table.remove(key);
        removed.inspect(|old| self.forget(old)).is_some()
    }

    /// Remove every variant stored under `primary`: what an invalidation of its URI asks.
    /// Returns their variances, for the eviction manager.
    pub fn remove_all(&self, primary: &HashBinary) -> Vec<Option<HashBinary>> {
        let group = self.table.remove_all(primary);
        group
            .into_iter()
            .map(|(variance, old)| {
                self.forget(&old);
                variance
            })
            .collect()
    }

    /// Drop every entry: the tier is no longer used (its settings changed in a reload). Its
    /// own share leaves the gauges, which a tier made since shares.
    pub fn clear(&self) {
        self.table.drain().iter().for_each(|o| self.forget(o));
    }
}
