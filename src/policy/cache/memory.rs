//! The memory tier: whole answers (header and body) in sharded maps, bounded by a byte budget
//! that Pingora's sharded LRU eviction manager keeps.
//!
//! Pingora's own `MemCache` is marked for testing: one global lock, no budget. Here an entry is
//! written whole (a miss is buffered until its end, and dropped past `max_object_size`), so a
//! lookup never sees half a body; concurrent misses for one key wait on the cache lock instead
//! of reading a write in progress. The eviction manager is told each entry's size when it is
//! stored and which entries were read; when the budget is passed it names the least recently
//! used, and Pingora's proxy purges them here.

use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::{Error, ErrorType, Result};
use pingora_cache::eviction::lru::Manager;
use pingora_cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use prometheus::{IntCounter, IntGauge};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::SystemTime;

const SHARDS: usize = 16;
const TIER: &str = "memory";

/// Shards of Pingora's LRU: as many as the map's.
pub type Eviction = Manager<SHARDS>;

/// A stored answer: its meta serialized as Pingora's storages keep it (the meta cannot be
/// cloned), its body, and what a purge selects it by.
struct Object {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    about: Arc<About>,
}

/// What an entry was stored for: its key (for the eviction manager), its route, path and query
/// (as the key has them), and the tags its answer gave it (`Surrogate-Key`, `Cache-Tag`).
#[derive(Debug)]
pub struct About {
    pub key: CompactCacheKey,
    pub route: String,
    pub path: String,
    pub query: String,
    pub tags: Vec<String>,
}

impl About {
    fn of(key: &CacheKey, meta: &CacheMeta) -> About {
        let mut about = About {
            key: key.to_compact(),
            route: String::new(),
            path: String::new(),
            query: String::new(),
            tags: Vec::new(),
        };
        // The key's lines are `name:length:value` (key.rs).
        for line in key.primary_key_str().unwrap_or_default().lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(_), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            match name {
                "route" => about.route = value.to_string(),
                "path" => about.path = value.to_string(),
                "query" => about.query = value.to_string(),
                _ => {}
            }
        }
        let headers = meta.headers();
        let surrogate = headers.get_all("surrogate-key").iter();
        let tags = surrogate.flat_map(|v| v.to_str().unwrap_or("").split_ascii_whitespace());
        let cache_tag = headers.get_all("cache-tag").iter();
        let tags = tags.chain(cache_tag.flat_map(|v| v.to_str().unwrap_or("").split(',')));
        about.tags = tags
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        about
    }
}

/// The variants stored under one primary key (one without `Vary`), by variance.
type Group = Vec<(Option<HashBinary>, Arc<Object>)>;
type Shard = RwLock<HashMap<HashBinary, Group>>;

pub struct MemoryTier {
    shards: Box<[Shard]>,
    max_object_size: usize,
    /// Bytes of stored bodies, in `pylon_cache_size_bytes{tier="memory"}`.
    bytes: IntGauge,
    entries: IntGauge,
    evictions: IntCounter,
}

impl MemoryTier {
    pub fn new(max_object_size: usize) -> MemoryTier {
        MemoryTier {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            max_object_size,
            bytes: METRICS.cache_size.with_label_values(&[TIER]),
            entries: METRICS.cache_entries.with_label_values(&[TIER]),
            evictions: METRICS.cache_evictions.with_label_values(&[TIER]),
        }
    }

    fn shard(&self, primary: &HashBinary) -> &Shard {
        &self.shards[usize::from(primary[0]) % SHARDS]
    }

    /// The shard of `primary`, locked for a change.
    fn write(&self, primary: &HashBinary) -> RwLockWriteGuard<'_, HashMap<HashBinary, Group>> {
        self.shard(primary)
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A removed entry leaves the gauges.
    fn forget(&self, object: &Object) {
        self.bytes.sub(object.body.len() as i64);
        self.entries.dec();
    }

    fn get(&self, key: &impl CacheHashKey) -> Option<Arc<Object>> {
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

    /// Put `object` in place of the variant's, or beside the other variants.
    fn insert(&self, key: &impl CacheHashKey, object: Object) {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let size = object.body.len() as i64;
        let object = Arc::new(object);
        let mut shard = self.write(&primary);
        let group = shard.entry(primary).or_default();
        match group.iter_mut().find(|(v, _)| *v == variance) {
            Some((_, old)) => {
                self.bytes.sub(old.body.len() as i64);
                *old = object;
            }
            None => {
                group.push((variance, object));
                self.entries.inc();
            }
        }
        self.bytes.add(size);
    }

    /// Change a stored variant's meta, keeping its body.
    fn replace_meta(&self, key: &impl CacheHashKey, meta: (Vec<u8>, Vec<u8>)) -> bool {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.write(&primary);
        let found = shard
            .get_mut(&primary)
            .and_then(|g| g.iter_mut().find(|(v, _)| *v == variance));
        let Some((_, object)) = found else {
            return false;
        };
        *object = Arc::new(Object {
            meta,
            body: object.body.clone(),
            about: Arc::clone(&object.about),
        });
        true
    }

    /// What every stored entry was stored for, those `pick` keeps: for a purge.
    pub fn select(&self, pick: impl Fn(&About) -> bool) -> Vec<Arc<About>> {
        let mut picked = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (_, object) in shard.values().flatten() {
                if pick(&object.about) {
                    picked.push(Arc::clone(&object.about));
                }
            }
        }
        picked
    }

    /// Remove the entry `about` describes; whether it was there.
    pub fn remove_entry(&self, about: &About) -> bool {
        self.remove(&about.key)
    }

    /// Mark the entry `about` describes stale, keeping it to revalidate or serve stale.
    pub fn expire_entry(&self, about: &About) -> Result<bool> {
        let Some(object) = self.get(&about.key) else {
            return Ok(false);
        };
        let mut meta = CacheMeta::deserialize(&object.meta.0, &object.meta.1)?;
        meta.expire_at(SystemTime::now());
        Ok(self.replace_meta(&about.key, meta.serialize()?))
    }

    /// Remove one variant.
    fn remove(&self, key: &impl CacheHashKey) -> bool {
        let primary = key.primary_bin();
        let variance = key.variance_bin();
        let mut shard = self.write(&primary);
        let Some(group) = shard.get_mut(&primary) else {
            return false;
        };
        let Some(at) = group.iter().position(|(v, _)| *v == variance) else {
            return false;
        };
        let (_, old) = group.swap_remove(at);
        if group.is_empty() {
            shard.remove(&primary);
        }
        self.forget(&old);
        true
    }

    /// Remove every variant stored under `primary`: what an invalidation of its URI asks.
    /// Returns the keys removed, for the eviction manager.
    pub fn remove_all(&self, primary: &HashBinary) -> Vec<Option<HashBinary>> {
        let group = self.write(primary).remove(primary).unwrap_or_default();
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
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            for (_, group) in shard.drain() {
                group.iter().for_each(|(_, object)| self.forget(object));
            }
        }
    }
}

struct Hit {
    body: Bytes,
    /// The part still to send: all of it, or a range.
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    /// The whole body is here: a `Range` request is served from it.
    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let end = end.unwrap_or(self.body.len()).min(self.body.len());
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "a range past the body");
        }
        (self.start, self.end, self.done) = (start, end, false);
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    tier: &'static MemoryTier,
    about: Arc<About>,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.body.len() + data.len() > self.tier.max_object_size {
            // Dropped without `finish`: nothing is stored, and the answer streams on.
            return Error::e_explain(ErrorType::InternalError, "larger than max_object_size");
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        let Miss {
            tier,
            about,
            meta,
            body,
        } = *self;
        tier.insert(
            &about.key.clone(),
            Object {
                meta,
                body: body.freeze(),
                about,
            },
        );
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait]
impl Storage for MemoryTier {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(object) = self.get(key) else {
            return Ok(None);
        };
        let hit = Hit {
            body: object.body.clone(),
            start: 0,
            end: object.body.len(),
            done: false,
        };
        let meta = CacheMeta::deserialize(&object.meta.0, &object.meta.1)?;
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            tier: self,
            about: Arc::new(About::of(key, meta)),
            meta: meta.serialize()?,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if !self.remove(target.key()) {
            return Ok(PurgeOutcome::NotFound);
        }
        if matches!(purge_type, PurgeType::Eviction) {
            self.evictions.inc();
        }
        Ok(PurgeOutcome::Purged(None))
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let Some(object) = self.get(key) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let mut meta = CacheMeta::deserialize(&object.meta.0, &object.meta.1)?;
        meta.expire_at(SystemTime::now());
        if !self.replace_meta(key, meta.serialize()?) {
            return Ok(PurgeOutcome::NotFound);
        }
        Ok(PurgeOutcome::Expired)
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        Ok(self.replace_meta(key, meta.serialize()?))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
