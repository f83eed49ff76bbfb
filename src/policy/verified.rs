//! A bounded memory of credentials already checked.
//!
//! bcrypt and signature checks are slow on purpose or by nature; a client presents the same
//! credential on every request. Remembering the outcome for a while turns the check into one
//! hash lookup. Entries are keyed by a keyed digest of the credential, never the credential
//! itself, and the digest is compared on a hit: the cache indexes by a 64-bit hash, and a
//! collision there must not let one credential pass as another.
//!
//! The digest is SipHash-2-4 with 128-bit output under a random per-process key: a PRF, so
//! without the key no one can make a credential collide with another's (finding one blind
//! takes about 2^128 tries), at a fiftieth of SHA-256's cost (a JWT's digest went from 14,000
//! instructions to under 300).

use pingora_memory_cache::MemoryCache;
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

pub type CredentialDigest = [u8; 16];

/// The longest an outcome is remembered.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A per-process key, so digests in memory cannot be matched against a precomputed table.
static KEY: LazyLock<[u8; 16]> = LazyLock::new(rand::random);

/// The digest a credential is remembered by.
pub fn digest(parts: &[&[u8]]) -> CredentialDigest {
    let mut h = SipHasher24::new_with_key(&KEY);
    for part in parts {
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part);
    }
    h.finish128().as_bytes()
}

#[derive(Clone)]
struct Entry<T> {
    digest: CredentialDigest,
    value: T,
    /// Checked on every hit, on tokio's clock (so tests can move it); the cache's own TTL
    /// only frees the memory.
    expires: Instant,
}

/// Outcomes of checks, by credential digest, each for its own time to live.
pub struct Verified<T: Clone + Send + Sync + 'static> {
    cache: MemoryCache<CredentialDigest, Entry<T>>,
}

impl<T: Clone + Send + Sync + 'static> Verified<T> {
    /// Remember at most about `size` outcomes (S3-FIFO eviction keeps the busy ones).
    pub fn new(size: usize) -> Self {
        Verified {
            cache: MemoryCache::new(size.max(1)),
        }
    }

    pub fn get(&self, digest: &CredentialDigest) -> Option<T> {
        let (entry, _) = self.cache.get(digest);
        entry
            .filter(|e| e.digest == *digest && Instant::now() < e.expires)
            .map(|e| e.value)
    }

    /// Remember `value` for `ttl`, at most a day (a token may claim to be valid for ever).
    pub fn put(&self, digest: CredentialDigest, value: T, ttl: Duration) {
        let ttl = ttl.min(MAX_TTL);
        let expires = Instant::now() + ttl;
        let entry = Entry {
            digest,
            value,
            expires,
        };
        self.cache.put(&digest, entry, Some(ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_until_expiry() {
        let v = Verified::new(10);
        let d = digest(&[b"alice", b"secret"]);
        assert_eq!(v.get(&d), None);
        v.put(d, 7, Duration::from_millis(50));
        assert_eq!(v.get(&d), Some(7));
        assert_eq!(v.get(&digest(&[b"alice", b"other"])), None);
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(v.get(&d), Some(7));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(v.get(&d), None);
        // A token valid until the end of time: remembered for a day, not a panic.
        v.put(d, 8, Duration::MAX);
        assert_eq!(v.get(&d), Some(8));
        tokio::time::advance(MAX_TTL).await;
        assert_eq!(v.get(&d), None);
    }

    #[test]
    fn parts_are_delimited() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    }
}
