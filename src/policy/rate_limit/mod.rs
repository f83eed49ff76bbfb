//! `rate_limit`: at most `limit` (+ `burst`) requests per `window` for each key.
//!
//! Counting is a sliding-window counter ([`window`]), kept in process ([`local`]) or in Redis
//! for a fleet of gateways ([`cluster`]). Over the limit, a request is refused with 429, or with
//! `throttle` first delayed until it would be admitted (when that is within `max_delay`) and
//! checked once more. Redis failures follow `on_store_error`: admit (the default, counted in
//! `pylon_rate_limit_store_errors_total`) or refuse.

pub mod cluster;
pub mod local;
pub mod window;

use super::limit_key::{Facts, KeySpec, KEY_HASHER};
use super::Consumer;
use crate::config::{OnStoreError, RateLimitConfig};
use cluster::ClusterWindows;
use local::LocalWindows;
use sha2::{Digest, Sha256};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use window::Outcome;

pub enum Store {
    Local(Arc<LocalWindows>),
    Cluster(Arc<ClusterWindows>),
}

pub struct RateLimit {
    pub name: Arc<str>,
    /// `limit + burst`: what a window admits.
    pub allowance: u64,
    pub window: Duration,
    keys: KeySpec,
    store: Store,
    on_store_error: OnStoreError,
    throttle: Option<Duration>,
}

/// A rate limit's answer.
pub enum Checked {
    Admitted(Outcome),
    /// Admitted after waiting this long.
    Throttled(Outcome),
    Refused(Outcome),
    /// The store failed; `on_store_error` decides.
    StoreFailed {
        admit: bool,
    },
}

impl RateLimit {
    pub fn new(name: &str, config: &RateLimitConfig, store: Store) -> Result<RateLimit, String> {
        if config.limit == 0 {
            return Err("`limit` must be above zero".into());
        }
        Ok(RateLimit {
            name: name.into(),
            allowance: config.limit + config.burst,
            window: config.window.0.max(Duration::from_millis(1)),
            keys: KeySpec::parse(&config.key)?,
            store,
            on_store_error: config.on_store_error,
            throttle: config.throttle.as_ref().map(|t| t.max_delay.0),
        })
    }

    pub async fn check(
        &self,
        req: &pingora::http::RequestHeader,
        facts: &Facts<'_>,
        consumer: Option<&Consumer>,
    ) -> Checked {
        let outcome = match self.hit(req, facts, consumer).await {
            Ok(o) => o,
            Err(e) => return self.store_failed(e),
        };
        if outcome.allowed {
            return Checked::Admitted(outcome);
        }
        match self.throttle {
            Some(max) if outcome.retry_after <= max => {
                tokio::time::sleep(outcome.retry_after).await;
                match self.hit(req, facts, consumer).await {
                    Ok(o) if o.allowed => Checked::Throttled(o),
                    Ok(o) => Checked::Refused(o),
                    Err(e) => self.store_failed(e),
                }
            }
            _ => Checked::Refused(outcome),
        }
    }

    fn store_failed(&self, error: String) -> Checked {
        log::warn!("rate limit `{}`: store failed: {error}", self.name);
        crate::metrics::METRICS
            .rate_limit_store_errors
            .with_label_values(&[&*self.name])
            .inc();
        Checked::StoreFailed {
            admit: self.on_store_error == OnStoreError::Allow,
        }
    }

    async fn hit(
        &self,
        req: &pingora::http::RequestHeader,
        facts: &Facts<'_>,
        consumer: Option<&Consumer>,
    ) -> Result<Outcome, String> {
        let window_ms = self.window.as_millis().max(1) as u64;
        match &self.store {
            Store::Local(windows) => {
                let mut h = KEY_HASHER.build_hasher();
                self.keys.feed(req, facts, consumer, &mut |b| h.write(b));
                Ok(windows.hit(h.finish(), unix_ms(), window_ms, self.allowance))
            }
            Store::Cluster(redis) => {
                let mut h = Sha256::new();
                self.keys.feed(req, facts, consumer, &mut |b| h.update(b));
                let digest = h.finalize();
                let route = if self.keys.has_route() {
                    facts.route
                } else {
                    ""
                };
                let key = format!(
                    "pylon:rl:{{{}:{}:{}}}",
                    self.name,
                    route,
                    hex::encode(&digest[..16])
                );
                redis.hit(&key, window_ms, self.allowance).await
            }
        }
    }

    /// `RateLimit-Policy` item: `"name";q=100;w=1`.
    pub fn policy_item(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.allowance,
            self.window.as_secs_f64().ceil().max(1.0) as u64
        )
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The most restrictive of a request's rate limits, for its response headers.
#[derive(Clone)]
pub struct LimitStatus {
    pub name: Arc<str>,
    pub allowance: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl LimitStatus {
    pub fn new(limit: &RateLimit, outcome: &Outcome) -> LimitStatus {
        LimitStatus {
            name: Arc::clone(&limit.name),
            allowance: limit.allowance,
            remaining: outcome.remaining,
            reset: outcome.reset,
        }
    }

    /// `RateLimit` and `X-RateLimit-*`, plus `RateLimit-Policy` (the route's limits, built at
    /// load) and `Retry-After` on a refusal.
    pub fn headers(
        &self,
        policy: &http::HeaderValue,
        retry_after: Option<Duration>,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        use http::HeaderValue;
        let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let reset = secs(self.reset);
        let mut headers = vec![
            (RATELIMIT_POLICY, policy.clone()),
            (
                RATELIMIT,
                HeaderValue::from_str(&format!("\"{}\";r={};t={reset}", self.name, self.remaining))
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
            ),
            (X_RATELIMIT_LIMIT, self.allowance.into()),
            (X_RATELIMIT_REMAINING, self.remaining.into()),
            (X_RATELIMIT_RESET, reset.into()),
        ];
        if let Some(after) = retry_after {
            headers.push((http::header::RETRY_AFTER, secs(after).max(1).into()));
        }
        headers
    }
}

const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset");
