//! `concurrency_limit`: at most `max` requests in flight per key.
//!
//! A request takes a [`Slot`] when its policies run and gives it back when it ends (the slot
//! lives in the request's context), however it ends. Counts are exact, in sharded maps, and a
//! key's entry goes away when its last request does, so idle keys cost nothing.

use super::limit_key::{Facts, KeySpec, Shards, KEY_HASHER};
use super::Consumer;
use crate::config::ConcurrencyLimitConfig;
use crate::error::{self, GatewayError};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Requests in flight per key hash.
pub type Counts = Shards<HashMap<u64, u64>>;

/// One request's place under a concurrency limit, released on drop.
pub struct Slot {
    counts: Arc<Counts>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.counts.lock(self.key);
        if let Some(n) = shard.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

pub struct ConcurrencyLimit {
    pub max: u64,
    /// The error over the cap: 429 or 503, as configured.
    pub error: GatewayError,
    keys: KeySpec,
    counts: Arc<Counts>,
}

impl ConcurrencyLimit {
    pub fn new(
        config: &ConcurrencyLimitConfig,
        counts: Arc<Counts>,
    ) -> Result<ConcurrencyLimit, String> {
        let error = match config.status {
            429 => error::TOO_MANY_REQUESTS,
            503 => error::UPSTREAM_UNAVAILABLE,
            s => return Err(format!("`status` must be 429 or 503, not {s}")),
        };
        if config.max == 0 {
            return Err("`max` must be above zero".into());
        }
        Ok(ConcurrencyLimit {
            max: config.max,
            error,
            keys: KeySpec::parse(&config.key)?,
            counts,
        })
    }

    /// A slot for this request, or `None` when its key is at the cap.
    pub fn acquire(
        &self,
        req: &pingora::http::RequestHeader,
        facts: &Facts,
        consumer: Option<&Consumer>,
    ) -> Option<Slot> {
        let mut h = KEY_HASHER.build_hasher();
        self.keys.feed(req, facts, consumer, &mut |b| h.write(b));
        let key = h.finish();
        let mut shard = self.counts.lock(key);
        let n = shard.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: Arc::clone(&self.counts),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let config: ConcurrencyLimitConfig = toml::from_str("max = 2").unwrap();
        let limit = ConcurrencyLimit::new(&config, Arc::default()).unwrap();
        let req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        let facts = |ip: &str| Facts {
            client_ip: ip.parse().unwrap(),
            route: "r",
        };
        let a = limit.acquire(&req, &facts("10.0.0.1"), None).unwrap();
        let _b = limit.acquire(&req, &facts("10.0.0.1"), None).unwrap();
        assert!(limit.acquire(&req, &facts("10.0.0.1"), None).is_none());
        assert!(limit.acquire(&req, &facts("10.0.0.2"), None).is_some());
        drop(a);
        assert!(limit.acquire(&req, &facts("10.0.0.1"), None).is_some());
    }
}
