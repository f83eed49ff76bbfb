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

use super::limit_key::{self, Facts, KeySpec, KEY_HASHER};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfTimeout, ConfigError};
use crate::consumer::Consumer;
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply};
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cluster::ClusterWindows;
use http::HeaderValue;
use local::LocalWindows;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use window::Outcome;

pub const KIND: Kind = Kind {
    name: "rate_limit",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `window`.
    pub limit: u64,
    pub window: ConfTimeout,
    /// Requests allowed on top of `limit` in a window.
    #[serde(default)]
    pub burst: u64,
    /// What is limited: `consumer`, `client_ip`, `route`, `header:NAME`, combined in order.
    #[serde(default = "limit_key::default_key")]
    pub key: Vec<String>,
    #[serde(default)]
    pub scope: LimitScope,
    /// The Redis shared by the gateways of a cluster (`scope = "cluster"`).
    #[serde(serialize_with = "crate::config::serialize_url")]
    pub redis_url: Option<String>,
    /// Instead of `redis_url`: seed nodes of a Redis Cluster.
    #[serde(default, serialize_with = "crate::config::serialize_urls")]
    pub redis_cluster: Vec<String>,
    /// How long a request waits for Redis before `on_store_error` decides.
    #[serde(default = "default_store_timeout")]
    pub store_timeout: ConfTimeout,
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Delay a request over the limit, up to `max_delay`, instead of refusing it at once.
    pub throttle: Option<ThrottleConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Local,
    Cluster,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    pub max_delay: ConfTimeout,
}

fn default_store_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_millis(20))
}

struct RateLimitSpec {
    config: RateLimitConfig,
    keys: Arc<KeySpec>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: RateLimitConfig = src.settings()?;
    let mut errors = Vec::new();
    if config.limit == 0 {
        errors.push(src.place.error("`limit` must be above zero"));
    }
    match (
        config.scope,
        &config.redis_url,
        config.redis_cluster.is_empty(),
    ) {
        (LimitScope::Cluster, None, true) => errors.push(
            src.place
                .error("`scope = \"cluster\"` needs a `redis_url` or `redis_cluster`"),
        ),
        (_, Some(_), false) => errors.push(
            src.place
                .error("give either `redis_url` or `redis_cluster`, not both"),
        ),
        (LimitScope::Local, _, _)
            if config.redis_url.is_some() || !config.redis_cluster.is_empty() =>
        {
            errors.push(
                src.place
                    .error("`redis_url` and `redis_cluster` need `scope = \"cluster\"`"),
            )
        }
        _ => {}
    }
    if let Err(e) = ClusterWindows::check(config.redis_url.as_deref(), &config.redis_cluster) {
        errors.push(src.place.error(e));
    }
    match KeySpec::parse(&config.key) {
        Ok(keys) if errors.is_empty() => Ok(Arc::new(RateLimitSpec {
            config,
            keys: Arc::new(keys),
        })),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(src.place.error(e));
            Err(errors)
        }
    }
}

impl Spec for RateLimitSpec {
    fn describe(&self) -> serde_json::Value {
        crate::policy::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let c = &self.config;
        let store = match c.scope {
            LimitScope::Cluster => {
                let timeout = c.store_timeout.0;
                let (url, seeds) = (c.redis_url.as_deref(), c.redis_cluster.as_slice());
                let name = url.map_or_else(|| seeds.join(","), str::to_string);
                // One connection per Redis and timeout, shared by the policies that use it.
                Store::Cluster(cx.keeper.keep("redis", &name, timeout, || {
                    ClusterWindows::new(url, seeds, timeout)
                })?)
            }
            LimitScope::Local => {
                Store::Local(cx.keeper.keep_default("rate_limit", cx.name, c.clone()))
            }
        };
        Ok(Compiled::Filter(Arc::new(RateLimit::new(
            cx.name,
            c,
            Arc::clone(&self.keys),
            store,
        )?)))
    }
}

pub enum Store {
    Local(Arc<LocalWindows>),
    Cluster(Arc<ClusterWindows>),
}

pub struct RateLimit {
    pub name: Arc<str>,
    /// `limit + burst`: what a window admits.
    pub allowance: u64,
    pub window: Duration,
    keys: Arc<KeySpec>,
    store: Store,
    on_store_error: OnStoreError,
    throttle: Option<Duration>,
    /// This limit's `RateLimit-Policy` item, `"name";q=100;w=1`.
    item: HeaderValue,
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

/// The rate limits a request met, for its response headers.
struct LimitState {
    /// The most restrictive of them.
    tightest: LimitStatus,
    /// `RateLimit-Policy` so far: each limit of the chain adds its item as the response
    /// header is written.
    policy: Option<HeaderValue>,
}

/// Count a refusal by a rate or concurrency limit and note it for the access log.
pub fn count_refusal(cx: &mut Context, policy: &str) {
    METRICS
        .rate_limited
        .with_label_values(&[cx.route_name(), policy])
        .inc();
    cx.notes.push("rate_limited");
}

impl RateLimit {
    pub fn new(
        name: &str,
        config: &RateLimitConfig,
        keys: Arc<KeySpec>,
        store: Store,
    ) -> Result<RateLimit, String> {
        if config.limit == 0 {
            return Err("`limit` must be above zero".into());
        }
        let allowance = config.limit + config.burst;
        let window = config.window.0.max(Duration::from_millis(1));
        let item = format!(
            "\"{name}\";q={allowance};w={}",
            window.as_secs_f64().ceil().max(1.0) as u64
        );
        Ok(RateLimit {
            name: name.into(),
            allowance,
            window,
            keys,
            store,
            on_store_error: config.on_store_error,
            throttle: config.throttle.as_ref().map(|t| t.max_delay.0),
            item: HeaderValue::from_str(&item).map_err(|e| e.to_string())?,
        })
    }

    pub async fn check(
        &self,
        req: &RequestHeader,
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
        METRICS
            .rate_limit_store_errors
            .with_label_values(&[&*self.name])
            .inc();
        Checked::StoreFailed {
            admit: self.on_store_error == OnStoreError::Allow,
        }
    }

    async fn hit(
        &self,
        req: &RequestHeader,
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

    /// Remember `outcome` for the response headers if it is the tightest so far (or `force`,
    /// for the limit that refused the request).
    fn record(&self, cx: &mut Context, outcome: &Outcome, force: bool) {
        let status = LimitStatus::new(self, outcome);
        match cx.state.get_mut::<LimitState>() {
            Some(s) if force || outcome.remaining < s.tightest.remaining => s.tightest = status,
            Some(_) => {}
            None => {
                cx.state.insert(LimitState {
                    tightest: status,
                    policy: None,
                });
            }
        }
    }
}

#[async_trait]
impl Filter for RateLimit {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::RESPONSE
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let ip = cx.client_ip(&req.headers);
        let checked = {
            let facts = Facts::of(ip, cx);
            self.check(req, &facts, cx.identity.counted()).await
        };
        match checked {
            Checked::Admitted(o) => self.record(cx, &o, false),
            Checked::Throttled(o) => {
                cx.notes.push("throttled");
                self.record(cx, &o, false);
            }
            Checked::Refused(o) => {
                self.record(cx, &o, true);
                count_refusal(cx, &self.name);
                return Err(Reply::error(error::TOO_MANY_REQUESTS)
                    .with(http::header::RETRY_AFTER, secs(o.retry_after).max(1).into()));
            }
            Checked::StoreFailed { admit: true } => {}
            Checked::StoreFailed { admit: false } => {
                count_refusal(cx, &self.name);
                return Err(Reply::error(error::TOO_MANY_REQUESTS)
                    .with(http::header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
        }
        Ok(())
    }

    fn response(
        &self,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let Some(state) = cx.state.get_mut::<LimitState>() else {
            return Ok(());
        };
        // A route's only limit sends its prebuilt item; a second one joins the list.
        let policy = match state.policy.take() {
            None => self.item.clone(),
            Some(items) => {
                let joined = [items.as_bytes(), b", ", self.item.as_bytes()].concat();
                HeaderValue::from_maybe_shared(Bytes::from(joined))
                    .unwrap_or_else(|_| self.item.clone())
            }
        };
        state.policy = Some(policy.clone());
        let tightest = (state.tightest.name == self.name).then(|| state.tightest.headers());
        // Straight into the header map: through `insert_header` each of these names would be
        // copied and parsed again, twice over, on every response.
        crate::headers::edit_response(resp, 5, |h| {
            h.try_insert(RATELIMIT_POLICY, policy)?;
            for (name, value) in tightest.into_iter().flatten() {
                h.try_insert(name, value)?;
            }
            Ok(())
        })
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

    /// `RateLimit` and `X-RateLimit-*`: the four values are written into one buffer and
    /// each is a slice of it, one allocation instead of four and no formatting machinery.
    pub fn headers(&self) -> [(http::HeaderName, HeaderValue); 4] {
        let (mut n, reset) = (itoa::Buffer::new(), secs(self.reset));
        let mut text = BytesMut::with_capacity(self.name.len() + 96);
        let mut put = |parts: &[&[u8]]| {
            let start = text.len();
            parts.iter().for_each(|p| text.extend_from_slice(p));
            start..text.len()
        };
        let name = self.name.as_bytes();
        let start = put(&[b"\"", name, b"\";r=", n.format(self.remaining).as_bytes()]).start;
        let ratelimit = start..put(&[b";t=", n.format(reset).as_bytes()]).end;
        let limit = put(&[n.format(self.allowance).as_bytes()]);
        let remaining = put(&[n.format(self.remaining).as_bytes()]);
        let reset = put(&[n.format(reset).as_bytes()]);
        let text = text.freeze();
        let value = |r| {
            HeaderValue::from_maybe_shared(text.slice(r))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        [
            (RATELIMIT, value(ratelimit)),
            (X_RATELIMIT_LIMIT, value(limit)),
            (X_RATELIMIT_REMAINING, value(remaining)),
            (X_RATELIMIT_RESET, value(reset)),
        ]
    }
}

/// Whole seconds, rounded up.
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset");
