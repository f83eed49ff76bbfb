//! The storage Pingora's cache is given: the memory tier in front of the optional disk tier,
//! and what the admin API and the other gateways purge.
//!
//! A lookup tries memory, then disk; an answer found on disk is put in memory for the next
//! (within the memory budget). A miss is buffered whole, then stored in memory and handed to
//! the disk's writer. Memory's eviction leaves the disk copy; a purge or an invalidation
//! removes both.

use super::about::{About, Names};
use super::disk::DiskTier;
use super::key;
use super::memory::{Eviction, MemoryTier, Object};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType, Result};
use pingora_cache::eviction::{CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora_cache::key::{CacheHashKey, CacheKey, CompactCacheKey};
use pingora_cache::storage::{
    self, HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome,
    PurgeTarget, PurgeType,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Tiers {
    pub memory: MemoryTier,
    /// The memory tier's.
    pub eviction: Eviction,
    pub disk: Option<DiskTier>,
}

impl Tiers {
    fn disk(&'static self) -> Option<&'static DiskTier> {
        self.disk.as_ref()
    }

    /// Put an answer read from disk in memory too, evicting past the memory budget.
    fn promote(&'static self, key: &CacheKey, object: Object) {
        let size = object.body.len();
        self.memory.insert(key, object);
        let tracked = CacheEntryKey::key_only(key.to_compact());
        for evicted in self.eviction.admit(tracked, size, SystemTime::now()) {
            if self.memory.remove(evicted.key()) {
                self.memory.evictions.inc();
            }
        }
    }

    /// Remove every variant stored for `key`'s primary key (its URI), in both tiers.
    pub fn invalidate(&'static self, key: &CacheKey) {
        let primary = key.primary_bin();
        for variance in self.memory.remove_all(&primary) {
            let mut stored = key.clone();
            if let Some(v) = variance {
                stored.set_variance_key(v);
            }
            let compact = stored.to_compact();
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(&compact, None));
        }
        if let Some(disk) = self.disk() {
            disk.remove_all(&primary);
        }
    }

    /// Remove one entry from both tiers: whether either had it.
    fn remove(&'static self, key: &CompactCacheKey) -> bool {
        let in_memory = self.memory.remove(key);
        if in_memory {
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(key, None));
        }
        let on_disk = self.disk().is_some_and(|d| d.remove(key));
        in_memory || on_disk
    }

    /// Mark one entry stale in both tiers: whether either had it.
    fn expire(&'static self, key: &impl CacheHashKey) -> bool {
        let now = SystemTime::now();
        let in_memory = self.memory.expire(key, now).unwrap_or(false);
        let on_disk = self.disk().is_some_and(|d| d.expire(key, now));
        in_memory || on_disk
    }
}

/// An answer held whole in memory, served from the start or from a range.
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

impl Hit {
    fn of(body: Bytes) -> HitHandler {
        let end = body.len();
        Box::new(Hit {
            body,
            start: 0,
            end,
            done: false,
        })
    }
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
        _storage: &'static (dyn storage::Storage + Sync),
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
    tiers: &'static Tiers,
    about: Arc<About>,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.body.len() + data.len() > self.tiers.memory.max_object_size {
            // Dropped without `finish`: nothing is stored, and the answer streams on.
            return Error::e_explain(ErrorType::InternalError, "larger than max_object_size");
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        let Miss {
            tiers,
            about,
            meta,
            body,
        } = *self;
        let body = body.freeze();
        if let Some(disk) = tiers.disk() {
            disk.store(Arc::clone(&about), &meta, body.clone());
        }
        let key = about.key.clone();
        tiers.memory.insert(&key, Object { meta, body, about });
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait]
impl storage::Storage for Tiers {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(object) = self.memory.get(key) {
            let meta = CacheMeta::deserialize(&object.meta.0, &object.meta.1)?;
            return Ok(Some((meta, Hit::of(object.body.clone()))));
        }
        let Some(disk) = self.disk() else {
            return Ok(None);
        };
        let Some(loaded) = disk.lookup(key).await else {
            return Ok(None);
        };
        // A meta this build cannot read (written by another version of Pingora) is a miss.
        let Ok(mut meta) = CacheMeta::deserialize(&loaded.meta.0, &loaded.meta.1) else {
            disk.remove(key);
            return Ok(None);
        };
        let mut serialized = loaded.meta;
        if let Some(at) = loaded.stale_at {
            meta.expire_at(at);
            serialized = meta.serialize()?;
        }
        let body = loaded.body;
        let object = Object {
            meta: serialized,
            body: body.clone(),
            about: loaded.about,
        };
        self.promote(key, object);
        Ok(Some((meta, Hit::of(body))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            tiers: self,
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
        let key = target.key();
        // Room in memory: the disk keeps its copy.
        if matches!(purge_type, PurgeType::Eviction) {
            if !self.memory.remove(key) {
                return Ok(PurgeOutcome::NotFound);
            }
            self.memory.evictions.inc();
            return Ok(PurgeOutcome::Purged(None));
        }
        Ok(match self.remove(key) {
            true => PurgeOutcome::Purged(None),
            false => PurgeOutcome::NotFound,
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(match Tiers::expire(self, target.key()) {
            true => PurgeOutcome::Expired,
            false => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let serialized = meta.serialize()?;
        if let Some(disk) = self.disk() {
            disk.update_meta(key, serialized.clone());
        }
        Ok(self.memory.replace_meta(key, serialized))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// The tiers, for the life of the process once made: Pingora's cache takes `'static` storage.
/// A configuration whose `[cache]` settings differ gets new ones; the old memory tier is
/// emptied and the old disk tier stopped (its files stay) when the last configuration using
/// them is gone.
pub struct Storage {
    pub tiers: &'static Tiers,
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.tiers.memory.clear();
        if let Some(disk) = self.tiers.disk() {
            disk.stop();
        }
    }
}

/// What an admin purge selects (`POST /cache/purge`), written as its JSON is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Purge {
    /// One route's entries for a path and query (every variant, every host).
    Key { route: String, path: String },
    /// Entries whose path starts with this, on every route.
    Prefix { prefix: String },
    /// Entries whose answer carried this tag (`Surrogate-Key`, `Cache-Tag`).
    Tag { tag: String },
}

impl Purge {
    fn selects(&self, names: &Names) -> bool {
        match self {
            Purge::Key { route, path } => {
                let (path, query) = path.split_once('?').unwrap_or((path, ""));
                names.route == *route
                    && names.path == path
                    && names.query == key::sorted_query(query, &[])
            }
            Purge::Prefix { prefix } => names.path.starts_with(prefix.as_str()),
            Purge::Tag { tag } => names.tags.iter().any(|t| t == tag),
        }
    }
}

impl Storage {
    /// Tiers of `max_object` entries: memory within `budget`, and files under `disk`'s path
    /// within its size.
    pub fn new(
        budget: usize,
        max_object: usize,
        disk: Option<(&Path, usize)>,
    ) -> Result<Storage, String> {
        let disk = disk
            .map(|(path, size)| DiskTier::open(path, size))
            .transpose()?;
        let tiers = Tiers {
            memory: MemoryTier::new(max_object),
            // Room for a million entries' bookkeeping before it is grown.
            eviction: Eviction::with_capacity(budget, 8192),
            disk,
        };
        Ok(Storage {
            tiers: Box::leak(Box::new(tiers)),
        })
    }

    /// Start the disk tier's work (after the process has daemonized).
    pub fn start(&self) {
        if let Some(disk) = self.tiers.disk() {
            disk.start();
        }
    }

    /// Remove the entries `purge` selects, or with `soft` mark them stale (they can still be
    /// served stale and revalidated). How many.
    pub fn purge(&self, purge: &Purge, soft: bool) -> usize {
        let tiers = self.tiers;
        let pick = |about: &About| purge.selects(&about.names);
        let mut picked = tiers.memory.select(pick);
        if let Some(disk) = tiers.disk() {
            picked.extend(disk.select(pick));
        }
        picked.sort_unstable_by_key(|a| a.id());
        picked.dedup_by_key(|a| a.id());
        picked
            .iter()
            .filter(|about| match soft {
                true => tiers.expire(&about.key),
                false => tiers.remove(&about.key),
            })
            .count()
    }
}

/// The running configuration's caches and purge channel.
pub trait LiveCaches: Send + Sync {
    fn caches(&self) -> Vec<Arc<Storage>>;
    /// The purge channel's Redis nodes (one, or a Cluster's); none without a channel.
    fn purge_redis(&self) -> Vec<String>;
}

/// Starts the disk tiers of the running configuration: at startup, once the process has
/// daemonized, and within a second of a reload that makes one.
pub struct DiskStarter {
    pub live: Arc<dyn LiveCaches>,
}

#[async_trait]
impl BackgroundService for DiskStarter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.live.caches().iter().for_each(|s| s.start());
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
