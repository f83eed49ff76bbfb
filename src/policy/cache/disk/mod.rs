//! The disk tier: answers in files under `[cache] path` (`file.rs`), within `disk_size`, found
//! again by a scan when the process starts, so they outlive a restart and a binary upgrade.
//!
//! Why files and not an embedded store (redb, sled, foyer): during a binary upgrade the old
//! process and the new one run side by side on the same folder, and such stores take it for
//! one process alone (an exclusive lock, or a log only its writer may append to). Files renamed
//! into place can be read and replaced by both at once, as nginx's `proxy_cache` does.
//!
//! Where the work happens: the index (which keys have a file, their size, what a purge selects
//! them by) is in memory and changed at once, so a purged entry is never read again; the
//! files are written, rewritten and removed by one thread, in the order asked, off the request
//! path; a lookup reads its file on Tokio's blocking pool. An entry is looked up only once its
//! file is written. Writes waiting for the disk hold at most `QUEUE_BYTES`; past that a new
//! answer is kept in memory only (`pylon_cache_disk_skipped_total{reason="queue_full"}`).
//! Pingora's LRU manager keeps the files within `disk_size`. Both threads start after the
//! process has daemonized (a fork keeps no thread): by the background service, or the first
//! write.

mod file;

use super::about::About;
use super::table::{Table, SHARDS};
use crate::metrics::METRICS;
use bytes::Bytes;
use pingora_cache::eviction::lru::Manager;
use pingora_cache::eviction::{CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora_cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora_cache::CacheMeta;
use prometheus::{IntCounter, IntGauge};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TIER: &str = "disk";

/// Bytes of answers waiting for the disk, at most.
const QUEUE_BYTES: usize = 64 << 20;

/// An entry the index knows.
struct Entry {
    about: Arc<About>,
    /// Its file's size.
    size: usize,
    /// Whether its file is written; until then the entry is not looked up.
    ready: AtomicBool,
    /// When a soft purge marked it stale (milliseconds since the epoch; 0: not marked), applied
    /// on lookup until its file, rewritten in turn, says so itself.
    stale_at: AtomicU64,
}

/// The writer's work, in the order asked.
enum Job {
    Store {
        entry: Arc<Entry>,
        meta: (Vec<u8>, Vec<u8>),
        names: Vec<u8>,
        body: Bytes,
    },
    Meta(CompactCacheKey, (Vec<u8>, Vec<u8>)),
    Expire(CompactCacheKey, SystemTime),
    Remove(CompactCacheKey),
    RemoveAll(HashBinary),
    Stop,
}

/// An entry read from its file.
pub struct Loaded {
    pub meta: (Vec<u8>, Vec<u8>),
    pub body: Bytes,
    pub about: Arc<About>,
    /// A soft purge's mark its file may not carry yet.
    pub stale_at: Option<SystemTime>,
}

pub struct DiskTier {
    root: PathBuf,
    index: Table<Entry>,
    eviction: Manager<SHARDS>,
    /// Bytes of stores sent to the writer and not yet written.
    queued: AtomicUsize,
    jobs: OnceLock<Sender<Job>>,
    stopped: AtomicBool,
    /// When an I/O error was last logged (milliseconds since the epoch).
    warned: AtomicU64,
    bytes: IntGauge,
    entries: IntGauge,
    evictions: IntCounter,
    queue_full: IntCounter,
    io_error: IntCounter,
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis().max(1) as u64)
}

impl DiskTier {
    /// The tier on `root` (made if missing), keeping its files within `budget` bytes. Nothing
    /// is read or started yet.
    pub fn open(root: &Path, budget: usize) -> Result<DiskTier, String> {
        file::make_dir(root).map_err(|e| format!("[cache] path {}: {e}", root.display()))?;
        Ok(DiskTier {
            root: root.to_path_buf(),
            index: Table::default(),
            // Room for a million entries' bookkeeping before it is grown.
            eviction: Manager::with_capacity(budget, 8192),
            queued: AtomicUsize::new(0),
            jobs: OnceLock::new(),
            stopped: AtomicBool::new(false),
            warned: AtomicU64::new(0),
            bytes: METRICS.cache_size.with_label_values(&[TIER]),
            entries: METRICS.cache_entries.with_label_values(&[TIER]),
            evictions: METRICS.cache_evictions.with_label_values(&[TIER]),
            queue_full: METRICS
                .cache_disk_skipped
                .with_label_values(&["queue_full"]),
            io_error: METRICS.cache_disk_skipped.with_label_values(&["io_error"]),
        })
    }

    /// Start the writer, and the scan that finds the files already there. Once.
    pub fn start(&'static self) {
        self.jobs();
    }

    fn jobs(&'static self) -> &'static Sender<Job> {
        self.jobs.get_or_init(|| {
            let (jobs, work) = mpsc::channel();
            let writer = std::thread::Builder::new()
                .name("pylon-cache-writer".into())
                .spawn(move || self.write_all(work));
            let scan = std::thread::Builder::new()
                .name("pylon-cache-scan".into())
                .spawn(move || self.scan());
            if let Err(e) = writer.and(scan) {
                log::error!(
                    "cache: the disk tier at {} cannot start: {e}",
                    self.root.display()
                );
            }
            jobs
        })
    }

    fn send(&'static self, job: Job) {
        let _ = self.jobs().send(job);
    }

    /// Read `key`'s entry from its file, if the index has one written.
    pub async fn lookup(&'static self, key: &impl CacheHashKey) -> Option<Loaded> {
        let entry = self.index.get(key)?;
        if !entry.ready.load(Ordering::Acquire) {
            return None;
        }
        let path = file::path_of(&self.root, &entry.about.key);
        let compact = entry.about.key.clone();
        let read = tokio::task::spawn_blocking(move || file::read(&path, &compact)).await;
        let record = match read {
            Ok(Ok(Some(record))) => record,
            Ok(Ok(None)) => return self.forget(&entry),
            Ok(Err(e)) => {
                self.failed("read", &e);
                return self.forget(&entry);
            }
            Err(_) => return None,
        };
        let tracked = CacheEntryKey::key_only(entry.about.key.clone());
        self.eviction
            .access(&tracked, entry.size, SystemTime::now());
        let stale_at = entry.stale_at.load(Ordering::Acquire);
        Some(Loaded {
            meta: record.meta,
            body: record.body,
            about: Arc::clone(&entry.about),
            stale_at: (stale_at != 0).then(|| UNIX_EPOCH + Duration::from_millis(stale_at)),
        })
    }

    /// Drop an entry whose file is gone or not one; it is not this tier's any more.
    fn forget(&self, entry: &Arc<Entry>) -> Option<Loaded> {
        let key = &entry.about.key;
        if self
            .index
            .remove_if(key, |e| std::ptr::eq(e, &**entry))
            .is_some()
        {
            self.left(entry);
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(key, None));
        }
        None
    }

    /// An entry left the index: the gauges follow.
    fn left(&self, entry: &Entry) {
        self.bytes.sub(entry.size as i64);
        self.entries.dec();
    }

    /// Store an answer: in the index at once, on disk once the writer reaches it.
    pub fn store(&'static self, about: Arc<About>, meta: &(Vec<u8>, Vec<u8>), body: Bytes) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let names = serde_json::to_vec(&about.names).unwrap_or_default();
        let size = file::size_of(&about.key, meta, &names, body.len());
        if self.queued.fetch_add(size, Ordering::AcqRel) + size > QUEUE_BYTES {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.queue_full.inc();
            return;
        }
        let entry = Arc::new(Entry {
            about,
            size,
            ready: AtomicBool::new(false),
            stale_at: AtomicU64::new(0),
        });
        let key = entry.about.key.clone();
        self.bytes.add(size as i64);
        match self.index.insert(&key, Arc::clone(&entry)) {
            Some(old) => self.bytes.sub(old.size as i64),
            None => self.entries.inc(),
        }
        let tracked = CacheEntryKey::key_only(key);
        let evicted = self.eviction.admit(tracked, size, SystemTime::now());
        self.send(Job::Store {
            entry,
            meta: meta.clone(),
            names,
            body,
        });
        // After the store: an answer larger than the whole budget evicts itself.
        self.evict(evicted);
    }

    fn evict(&'static self, evicted: Vec<CacheEntryKey>) {
        for key in evicted {
            let key = key.into_key();
            if let Some(old) = self.index.remove(&key) {
                self.left(&old);
                self.evictions.inc();
                self.send(Job::Remove(key));
            }
        }
    }

    /// A revalidated entry's new meta.
    pub fn update_meta(&'static self, key: &impl CacheHashKey, meta: (Vec<u8>, Vec<u8>)) {
        if let Some(entry) = self.index.get(key) {
            entry.stale_at.store(0, Ordering::Release);
            self.send(Job::Meta(entry.about.key.clone(), meta));
        }
    }

    /// Mark an entry stale from `at`: whether there was one.
    pub fn expire(&'static self, key: &impl CacheHashKey, at: SystemTime) -> bool {
        let Some(entry) = self.index.get(key) else {
            return false;
        };
        entry.stale_at.store(millis(at), Ordering::Release);
        self.send(Job::Expire(entry.about.key.clone(), at));
        true
    }

    /// Remove one entry: whether there was one.
    pub fn remove(&'static self, key: &impl CacheHashKey) -> bool {
        let Some(old) = self.index.remove(key) else {
            return false;
        };
        self.left(&old);
        let compact = old.about.key.clone();
        self.eviction
            .remove(CacheEntryKeyRef::from_entry_id(&compact, None));
        self.send(Job::Remove(compact));
        true
    }

    /// Remove every variant of `primary`, those this process knows and those it does not (an
    /// upgrade's other process may have stored one since the scan).
    pub fn remove_all(&'static self, primary: &HashBinary) {
        for (_, old) in self.index.remove_all(primary) {
            self.left(&old);
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(&old.about.key, None));
        }
        self.send(Job::RemoveAll(*primary));
    }

    /// What every entry was stored for, those `pick` keeps: for a purge.
    pub fn select(&self, pick: impl Fn(&About) -> bool) -> Vec<Arc<About>> {
        let picked = self.index.select(|entry| pick(&entry.about));
        picked.iter().map(|e| Arc::clone(&e.about)).collect()
    }

    /// The tier is no longer used (its settings changed in a reload): its files stay for the
    /// next, its threads end once the writer has done what it was asked.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.index.drain().iter().for_each(|e| self.left(e));
        if let Some(jobs) = self.jobs.get() {
            let _ = jobs.send(Job::Stop);
        }
    }

    /// Count an I/O error; log it unless another was logged in the last minute (a full disk
    /// fails every write).
    fn failed(&self, what: &str, error: &std::io::Error) {
        self.io_error.inc();
        let now = millis(SystemTime::now());
        let last = self.warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!("cache: disk {what} under {}: {error}", self.root.display());
        }
    }

    /// The writer thread: each job in turn, until the tier stops.
    fn write_all(&self, work: Receiver<Job>) {
        let failed = |what: &str, e: std::io::Error| self.failed(what, &e);
        for job in work {
            match job {
                Job::Store {
                    entry,
                    meta,
                    names,
                    body,
                } => {
                    let key = &entry.about.key;
                    match file::write(&self.root, key, &meta, &names, &body) {
                        Ok(_) => entry.ready.store(true, Ordering::Release),
                        Err(e) => failed("write", e),
                    }
                    self.queued.fetch_sub(entry.size, Ordering::AcqRel);
                }
                Job::Meta(key, meta) => {
                    if let Err(e) = file::rewrite(&self.root, &key, |_| Some(meta)) {
                        failed("rewrite", e);
                    }
                }
                Job::Expire(key, at) => {
                    let expired = |meta: &(Vec<u8>, Vec<u8>)| {
                        let mut meta = CacheMeta::deserialize(&meta.0, &meta.1).ok()?;
                        meta.expire_at(at);
                        meta.serialize().ok()
                    };
                    if let Err(e) = file::rewrite(&self.root, &key, expired) {
                        failed("rewrite", e);
                    }
                }
                Job::Remove(key) => {
                    if let Err(e) = file::remove(&self.root, &key) {
                        failed("remove", e);
                    }
                }
                Job::RemoveAll(primary) => {
                    if let Err(e) = file::remove_all(&self.root, &primary) {
                        failed("remove", e);
                    }
                }
                Job::Stop => return,
            }
        }
    }

    /// The scan thread: index the files already there, the oldest first so they are the first
    /// evicted, and evict past the budget.
    fn scan(&'static self) {
        let started = Instant::now();
        let mut found = Vec::new();
        let scanned = file::scan(&self.root, |entry| {
            found.push(entry);
            !self.stopped.load(Ordering::Relaxed)
        });
        if let Err(e) = scanned {
            self.failed("scan", &e);
        }
        found.sort_by_key(|f| f.modified);
        let mut kept = 0;
        for f in found {
            if self.stopped.load(Ordering::Relaxed) {
                return;
            }
            let entry = Arc::new(Entry {
                about: Arc::new(About {
                    key: f.key.clone(),
                    names: f.names,
                }),
                size: f.size,
                ready: AtomicBool::new(true),
                stale_at: AtomicU64::new(0),
            });
            // A key stored since the process started has its newer file.
            if !self.index.insert_new(&f.key, entry) {
                continue;
            }
            kept += 1;
            self.bytes.add(f.size as i64);
            self.entries.inc();
            let tracked = CacheEntryKey::key_only(f.key);
            let evicted = self.eviction.admit(tracked, f.size, f.modified);
            self.evict(evicted);
        }
        log::info!(
            "cache: {kept} entries found on disk under {} in {} ms",
            self.root.display(),
            started.elapsed().as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cache::about::Names;
    use pingora_cache::CacheKey;

    fn about(path: &str) -> Arc<About> {
        Arc::new(About {
            key: CacheKey::new(format!("path:{}:{path}\n", path.len()), "").to_compact(),
            names: Names {
                path: path.into(),
                ..Names::default()
            },
        })
    }

    fn tier(root: &Path, budget: usize) -> &'static DiskTier {
        let tier = Box::leak(Box::new(DiskTier::open(root, budget).unwrap()));
        tier.start();
        tier
    }

    /// Wait for the writer (or the scan) to reach `key`.
    async fn written(tier: &DiskTier, key: &CompactCacheKey) {
        for _ in 0..500 {
            if tier
                .index
                .get(key)
                .is_some_and(|e| e.ready.load(Ordering::Acquire))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never written");
    }

    #[tokio::test]
    async fn entries_are_found_again_by_the_next_process_within_the_budget() {
        let root = std::env::temp_dir().join(format!("pylon-disk-tier-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let first = tier(&root, 1 << 20);
        let meta = (vec![1; 10], vec![2; 10]);
        let (a, b, c) = (about("/a"), about("/b"), about("/c"));
        for entry in [&a, &b, &c] {
            first.store(Arc::clone(entry), &meta, Bytes::from_static(b"body"));
            written(first, &entry.key).await;
        }
        let loaded = first.lookup(&a.key).await.unwrap();
        assert_eq!(
            (&loaded.body[..], loaded.meta),
            (&b"body"[..], meta.clone())
        );
        assert!(loaded.stale_at.is_none());
        // A soft purge shows at once; a hard one too.
        assert!(first.expire(&b.key, UNIX_EPOCH + Duration::from_secs(5)));
        assert_eq!(
            first.lookup(&b.key).await.unwrap().stale_at,
            Some(UNIX_EPOCH + Duration::from_secs(5))
        );
        assert!(first.remove(&c.key));
        assert!(first.lookup(&c.key).await.is_none());
        let tagged = first.select(|about| about.names.path != "/a");
        assert_eq!(tagged.len(), 1);
        first.stop();
        // Its writer finishes what it was asked.
        let gone = file::path_of(&root, &c.key);
        for _ in 0..100 {
            if !gone.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The next process finds what was left, within its budget: one entry of the two.
        let size = file::size_of(&a.key, &meta, &serde_json::to_vec(&a.names).unwrap(), 4);
        let next = tier(&root, size + size / 2);
        for _ in 0..100 {
            if !next.index.select(|_| true).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The scan of two files is done well within this.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let kept = next.index.select(|_| true);
        assert_eq!(kept.len(), 1);
        assert_ne!(kept[0].about.names.path, "/c");
        assert!(next.lookup(&kept[0].about.key).await.is_some());
        next.stop();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
