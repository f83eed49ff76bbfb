//! `concurrency_limit`: at most `max` requests in flight per key.
//!
//! A request takes a [`Slot`] when its policies run and gives it back when it ends (the slot
//! lives in the request's context), however it ends. Counts are exact, in sharded maps, and a
//! key's entry goes away when its last request does, so idle keys cost nothing. The counts are
//! kept across reloads while the policy's settings stay the same: requests started before a
//! reload still hold their slots.

use super::limit_key::{self, KeySpec, KEY_HASHER};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::error::{self, GatewayError};
use crate::filter::{Context, Filter, Phases, Reply};
use crate::shards::Shards;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "concurrency_limit",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// Requests in flight allowed per key.
    pub max: u64,
    #[serde(default = "limit_key::default_key")]
    pub key: Vec<String>,
    /// `429` (the client should slow down) or `503` (the service is saturated).
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    429
}

struct ConcurrencySpec {
    config: ConcurrencyLimitConfig,
    keys: Arc<KeySpec>,
    error: GatewayError,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: ConcurrencyLimitConfig = src.settings()?;
    let mut errors = Vec::new();
    if config.max == 0 {
        errors.push(src.place.error("`max` must be above zero"));
    }
    let error = match config.status {
        429 => Some(error::TOO_MANY_REQUESTS),
        503 => Some(error::UPSTREAM_UNAVAILABLE),
        s => {
            errors.push(
                src.place
                    .error(format!("`status` must be 429 or 503, not {s}")),
            );
            None
        }
    };
    let keys = KeySpec::parse(&config.key).map_err(|e| src.place.error(e));
    match (keys, error) {
        (Ok(keys), Some(error)) if errors.is_empty() => Ok(Arc::new(ConcurrencySpec {
            config,
            keys: Arc::new(keys),
            error,
        })),
        (keys, _) => {
            errors.extend(keys.err());
            Err(errors)
        }
    }
}

impl Spec for ConcurrencySpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let counts = cx
            .keeper
            .keep_default("concurrency_limit", cx.name, self.config.clone());
        Ok(Compiled::Filter(Arc::new(ConcurrencyLimit {
            name: cx.name.into(),
            max: self.config.max,
            error: self.error,
            keys: Arc::clone(&self.keys),
            counts,
        })))
    }
}

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

/// The slots a request holds, until its context is dropped.
#[derive(Default)]
struct Slots(Vec<Slot>);

pub struct ConcurrencyLimit {
    name: Arc<str>,
    max: u64,
    /// The error over the cap: 429 or 503, as configured.
    error: GatewayError,
    keys: Arc<KeySpec>,
    counts: Arc<Counts>,
}

impl ConcurrencyLimit {
    /// A slot for this key hash, or `None` when it is at the cap.
    fn acquire(&self, key: u64) -> Option<Slot> {
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

#[async_trait]
impl Filter for ConcurrencyLimit {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let mut h = KEY_HASHER.build_hasher();
        let ip = cx.client_ip(&req.headers);
        let facts = limit_key::Facts::of(ip, cx);
        self.keys
            .feed(req, &facts, cx.identity.counted(), &mut |b| h.write(b));
        match self.acquire(h.finish()) {
            Some(slot) => {
                match cx.state.get_mut::<Slots>() {
                    Some(slots) => slots.0.push(slot),
                    None => {
                        cx.state.insert(Slots(vec![slot]));
                    }
                }
                Ok(())
            }
            None => {
                super::rate_limit::count_refusal(cx, &self.name);
                Err(Reply::error(self.error)
                    .with(http::header::RETRY_AFTER, HeaderValue::from_static("1")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u64) -> ConcurrencyLimit {
        ConcurrencyLimit {
            name: "c".into(),
            max,
            error: error::TOO_MANY_REQUESTS,
            keys: Arc::new(KeySpec::parse(&["client_ip".into()]).unwrap()),
            counts: Arc::default(),
        }
    }

    #[test]
    fn caps_and_releases() {
        let limit = limit(2);
        let a = limit.acquire(1).unwrap();
        let _b = limit.acquire(1).unwrap();
        assert!(limit.acquire(1).is_none());
        assert!(limit.acquire(2).is_some());
        drop(a);
        assert!(limit.acquire(1).is_some());
    }

    #[tokio::test]
    async fn slots_live_as_long_as_the_request() {
        let limit = limit(1);
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut cx = Context::default();
        limit.request(&req, &mut cx).await.unwrap();
        let mut other = Context::default();
        let refused = limit.request(&req, &mut other).await.unwrap_err();
        assert_eq!(refused.status, 429);
        assert_eq!(other.notes, ["rate_limited"]);
        drop(cx);
        limit.request(&req, &mut other).await.unwrap();
    }
}
