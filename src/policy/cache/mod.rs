//! `cache`: a shared HTTP cache (RFC 9111) in front of a route's upstream, on Pingora's cache.
//!
//! Pingora's proxy does the caching: the lookup after the request phase (so authentication,
//! limits and the WAF run on hits too), the cache lock that lets one of several concurrent
//! misses fetch while the others wait, conditional revalidation (a `304` refreshes the entry),
//! `HEAD` and `Range` answered from a stored `GET`, serving stale. This module answers its
//! questions ([`RouteCache`]): whether a request may use the cache, its key (`key.rs`), whether
//! and until when an answer may be stored (RFC 9111 by default, `default_ttl` only for answers
//! without freshness, `max_ttl` as a cap), which variant a `Vary` answer a request takes (only
//! on the request headers `vary_headers` allows, `Accept-Encoding` normalised), and how it went
//! (`Cache-Status`, RFC 9211). The storage is the process's memory tier (`memory.rs`), shared
//! by every route and kept across reloads while `[cache]` does not change.

mod about;
mod disk;
pub mod fanout;
mod freshness;
mod key;
mod memory;
mod store;
mod table;

pub use store::{DiskStarter, LiveCaches, Purge, Storage};

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfigError};
use crate::filter::{CacheResult, Context, Filter, Phases, RouteCache};
use crate::metrics::METRICS;
use freshness::Freshness;
use http::header::{AUTHORIZATION, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use key::KeySpec;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, HttpCache, NoCacheReason, RespCacheable,
    VarianceBuilder,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

pub const KIND: Kind = Kind {
    name: "cache",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicyConfig {
    /// Freshness for answers that carry none (no `max-age`, `s-maxage` or `Expires`); zero:
    /// such answers are not stored (no heuristic freshness).
    #[serde(default = "zero")]
    pub default_ttl: ConfDuration,
    /// The longest any answer is kept fresh, whatever it says.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: ConfDuration,
    /// The statuses that may be stored.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// The methods the cache answers (`HEAD` is answered from a `GET` entry).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// What tells two requests apart: `host`, `path`, `query`, `header:NAME`, `consumer`.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Query parameters left out of the key (tracking tags).
    #[serde(default)]
    pub ignore_query: Vec<String>,
    /// The request headers a `Vary` may split entries on; an answer varying on another is not
    /// stored.
    #[serde(default = "default_vary")]
    pub vary_headers: Vec<String>,
    /// Serve a stale entry this long past its freshness while one request refreshes it, unless
    /// the answer says otherwise.
    #[serde(default = "zero")]
    pub stale_while_revalidate: ConfDuration,
    /// Serve a stale entry this long past its freshness when the upstream fails.
    #[serde(default = "zero")]
    pub stale_if_error: ConfDuration,
    /// How long concurrent misses for one key wait for the one fetching it.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: ConfDuration,
    /// Store answers that set cookies.
    #[serde(default)]
    pub store_set_cookie: bool,
}

fn zero() -> ConfDuration {
    ConfDuration(Duration::ZERO)
}
fn default_max_ttl() -> ConfDuration {
    ConfDuration(Duration::from_secs(86_400))
}
/// The statuses RFC 9110 §15.1 calls heuristically cacheable.
fn default_statuses() -> Vec<u16> {
    vec![200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]
}
fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
fn default_key() -> Vec<String> {
    vec!["host".into(), "path".into(), "query".into()]
}
fn default_vary() -> Vec<String> {
    vec![
        "accept-encoding".into(),
        "accept-language".into(),
        "accept".into(),
    ]
}
fn default_lock_timeout() -> ConfDuration {
    ConfDuration(Duration::from_secs(5))
}

struct CacheSpec {
    config: CachePolicyConfig,
    key: KeySpec,
    methods: Vec<Method>,
    vary: Vec<HeaderName>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: CachePolicyConfig = src.settings()?;
    let bad = |m: String| vec![src.place.error(&m)];
    let key = KeySpec::parse(&config.key, &config.ignore_query).map_err(bad)?;
    let methods = config
        .methods
        .iter()
        .map(|m| match m.as_str() {
            "GET" => Ok(Method::GET),
            "HEAD" => Ok(Method::HEAD),
            other => Err(format!(
                "`methods`: `{other}` cannot be cached (GET and HEAD can)"
            )),
        })
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    let vary = config
        .vary_headers
        .iter()
        .map(|h| {
            HeaderName::try_from(h.as_str())
                .map_err(|_| format!("`vary_headers`: `{h}` is not a header name"))
        })
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    if let Some(s) = config.statuses.iter().find(|s| !(100..=599).contains(*s)) {
        return Err(bad(format!("`statuses`: {s} is not an HTTP status")));
    }
    Ok(Arc::new(CacheSpec {
        config,
        key,
        methods,
        vary,
    }))
}

/// One lock table for every cached route: a key's fetch holds it at most this long.
static LOCK: LazyLock<CacheLock> = LazyLock::new(|| CacheLock::new(Duration::from_secs(60)));

impl Spec for CacheSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let storage = &cx.config.cache;
        let budget = storage.memory_size.bytes();
        let max_object = storage.max_object_size.bytes();
        if storage.disk_size.is_some() && storage.path.is_none() {
            return Err("`[cache] disk_size` needs a `path` for the disk tier".into());
        }
        let disk = storage.disk();
        let storage = cx.keeper.keep(
            "cache",
            "storage",
            (budget, max_object, disk.clone()),
            || {
                let disk = disk.as_ref().map(|(path, size)| (path.as_path(), *size));
                Storage::new(budget, max_object, disk)
            },
        )?;
        let c = &self.config;
        Ok(Compiled::Filter(Arc::new(Cache {
            storage,
            key: self.key.clone(),
            methods: self.methods.clone(),
            statuses: c.statuses.clone(),
            vary: self.vary.clone(),
            default_ttl: c.default_ttl.0,
            max_ttl: c.max_ttl.0,
            stale_while_revalidate: c.stale_while_revalidate.0.as_secs() as u32,
            stale_if_error: c.stale_if_error.0.as_secs() as u32,
            lock_timeout: c.lock_timeout.0,
            store_set_cookie: c.store_set_cookie,
        })))
    }
}

pub struct Cache {
    storage: Arc<Storage>,
    key: KeySpec,
    methods: Vec<Method>,
    statuses: Vec<u16>,
    vary: Vec<HeaderName>,
    default_ttl: Duration,
    max_ttl: Duration,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    lock_timeout: Duration,
    store_set_cookie: bool,
}

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `Accept-Encoding` as the codings a client takes, sorted: clients that take the same ones
/// share a variant, and one that takes no gzip never gets a gzip body.
fn codings(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value).to_ascii_lowercase();
    let mut taken: Vec<&str> = text
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next()?;
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!coding.is_empty() && !refused).then_some(coding)
        })
        .collect();
    taken.sort_unstable();
    taken.dedup();
    taken.join(",").into_bytes()
}

impl Cache {
    /// Remove every variant stored for the request's URI (as its `GET` would be keyed).
    fn invalidate(&self, req: &RequestHeader, cx: &Context) {
        let key = CacheKey::new(self.key.primary(req, cx), "");
        self.storage.tiers.invalidate(&key);
    }
}

impl RouteCache for Cache {
    fn enable(&self, cache: &mut HttpCache, req: &RequestHeader, _cx: &Context) {
        if !self.methods.contains(&req.method) {
            return;
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        let lock: &'static CacheKeyLockImpl = &*LOCK;
        let tiers = self.storage.tiers;
        cache.enable(
            tiers,
            Some(&tiers.eviction),
            None,
            Some(lock),
            Some(overrides),
        );
        // `Cache-Control: no-store` on the request: neither answered from nor stored.
        let cc = CacheControl::from_req_headers(req);
        if cc.as_ref().is_some_and(|cc| cc.no_store()) {
            cache.disable(NoCacheReason::Custom("request no-store"));
        }
    }

    fn key(&self, req: &RequestHeader, cx: &Context) -> CacheKey {
        CacheKey::new(self.key.primary(req, cx), "")
    }

    fn cacheable(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        cx: &mut Context,
    ) -> RespCacheable {
        use RespCacheable::Uncacheable;
        let merged;
        let resp = match cx.state.remove::<NotModified>() {
            Some(NotModified(fields)) => {
                merged = updated(resp, &fields);
                &merged
            }
            None => resp,
        };
        if !self.statuses.contains(&resp.status.as_u16()) {
            return Uncacheable(NoCacheReason::Custom("status"));
        }
        if !self.store_set_cookie && resp.headers.contains_key(SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        for vary in resp.headers.get_all(VARY) {
            let names = vary.to_str().unwrap_or("*");
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self
                    .vary
                    .iter()
                    .any(|v| v.as_str().eq_ignore_ascii_case(name))
                {
                    return Uncacheable(NoCacheReason::Custom("vary"));
                }
            }
        }
        // A `CDN-Cache-Control` (RFC 9213) is for caches like this one, in place of
        // `Cache-Control`.
        let cc = CacheControl::from_resp_headers_named("cdn-cache-control", resp)
            .or_else(|| CacheControl::from_resp_headers(resp));
        let authorized = req.headers.contains_key(AUTHORIZATION);
        if authorized
            && !cc
                .as_ref()
                .is_some_and(|cc| cc.allow_caching_authorized_req())
        {
            return Uncacheable(NoCacheReason::Custom("authorization"));
        }
        if cc
            .as_ref()
            .is_some_and(|cc| cc.is_cacheable() == Cacheable::No)
        {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        let freshness = Freshness::of(cc.as_ref(), &resp.headers, now).or_else(|| {
            let by_default = !self.default_ttl.is_zero();
            by_default.then(|| Freshness::given(self.default_ttl, &resp.headers, now))
        });
        let Some(freshness) = freshness else {
            return Uncacheable(NoCacheReason::OriginNotCache);
        };
        let (created, fresh_until) = freshness.capped(self.max_ttl).times(now);
        // The answer's own windows, or none where it forbids stale answers
        // (`must-revalidate`, `proxy-revalidate`, `s-maxage`); the policy's otherwise.
        let secs = |d: Option<Duration>, default: u32| d.map_or(default, |d| d.as_secs() as u32);
        let (swr, sie) = match &cc {
            Some(cc) => (
                secs(
                    cc.serve_stale_while_revalidate_duration(),
                    self.stale_while_revalidate,
                ),
                secs(cc.serve_stale_if_error_duration(), self.stale_if_error),
            ),
            None => (self.stale_while_revalidate, self.stale_if_error),
        };
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, header))
    }

    fn vary(&self, meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        let mut variance = VarianceBuilder::new();
        let mut values = Vec::new();
        for vary in meta.headers().get_all(VARY) {
            for name in vary.to_str().unwrap_or("").split(',').map(str::trim) {
                if name.is_empty() {
                    continue;
                }
                let name = name.to_ascii_lowercase();
                let value = req.headers.get(name.as_str()).map(HeaderValue::as_bytes);
                let value = match name.as_str() {
                    "accept-encoding" => codings(value.unwrap_or_default()),
                    _ => value.unwrap_or_default().to_vec(),
                };
                values.push((name, value));
            }
        }
        for (name, value) in values {
            variance.add_owned_name_value(name, value);
        }
        variance.finalize()
    }

    fn serve_stale(&self, _error: Option<&pingora::Error>) -> bool {
        // While revalidating, or in place of any failure to get an answer: the entry's own
        // stale-while-revalidate and stale-if-error windows decide how long that holds.
        true
    }

    fn respond(
        &self,
        cache: &HttpCache,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &Context,
    ) -> Option<CacheResult> {
        if !req.method.is_safe() && (200..400).contains(&resp.status.as_u16()) {
            self.invalidate(req, cx);
        }
        if let Some(waited) = cache.lock_duration() {
            METRICS.cache_lock_wait.observe(waited.as_secs_f64());
        }
        // Whole seconds of freshness left, rounded down: a stale entry's is negative.
        let ttl = |meta: &CacheMeta| {
            let now = SystemTime::now();
            match meta.fresh_until().duration_since(now) {
                Ok(left) => left.as_secs() as i64,
                Err(past) => -(past.duration().as_secs_f64().ceil() as i64),
            }
        };
        let (result, status) = match cache.phase() {
            CachePhase::Hit => {
                let ttl = ttl(cache.cache_meta());
                (CacheResult::Hit, format!("pylon; hit; ttl={ttl}"))
            }
            CachePhase::Stale | CachePhase::StaleUpdating => {
                let ttl = ttl(cache.cache_meta());
                (CacheResult::Stale, format!("pylon; hit; ttl={ttl}"))
            }
            CachePhase::Miss => (CacheResult::Miss, "pylon; fwd=miss; stored".into()),
            CachePhase::Expired => (CacheResult::Expired, "pylon; fwd=stale; stored".into()),
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => (
                CacheResult::Revalidated,
                "pylon; fwd=stale; fwd-status=304".into(),
            ),
            CachePhase::Disabled(NoCacheReason::NeverEnabled) | CachePhase::Bypass => {
                (CacheResult::Bypass, "pylon; fwd=bypass".into())
            }
            CachePhase::Disabled(NoCacheReason::Custom("request no-store")) => {
                (CacheResult::Bypass, "pylon; fwd=request".into())
            }
            CachePhase::Disabled(_) => (CacheResult::Miss, "pylon; fwd=miss".into()),
            CachePhase::Uninit | CachePhase::CacheKey => return None,
        };
        if let Ok(value) = HeaderValue::from_str(&status) {
            let _ = resp.insert_header(CACHE_STATUS, value);
        }
        // `Age` on an answer from the cache is Pingora's (its hit header), from the entry's
        // creation, which `freshness.rs` dates back by the age it arrived with.
        Some(result)
    }
}

/// A `304`'s header fields, kept from the upstream-response phase for the entry's update.
struct NotModified(HeaderMap);

/// Fields a `304` may not change in the stored answer: those its stored body depends on, and
/// the connection's own (RFC 9111 §3.2).
const KEPT: [HeaderName; 10] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The stored answer's header with every field of the `304` in place of its own (§4.3.4).
fn updated(stored: &ResponseHeader, fields: &HeaderMap) -> ResponseHeader {
    let mut header = stored.clone();
    for name in fields.keys() {
        if KEPT.contains(name) {
            continue;
        }
        header.remove_header(name);
        for value in fields.get_all(name) {
            let _ = header.append_header(name.clone(), value.clone());
        }
    }
    header
}

impl Filter for Cache {
    fn phases(&self) -> Phases {
        Phases::UPSTREAM_RESPONSE
    }

    fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        if resp.status == http::StatusCode::NOT_MODIFIED {
            cx.state.insert(NotModified(resp.headers.clone()));
        }
        Ok(())
    }

    fn cache(&self) -> Option<&dyn RouteCache> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::codings;

    #[test]
    fn accept_encoding_is_normalised_to_the_codings_taken() {
        let c = |v: &str| String::from_utf8(codings(v.as_bytes())).unwrap();
        assert_eq!(c("gzip, deflate"), c("Deflate,GZIP"));
        assert_eq!(c("gzip;q=0.5, br"), "br,gzip");
        assert_eq!(c("gzip;q=0, br"), "br");
        assert_eq!(c(""), "");
        assert_ne!(c("gzip"), c("identity"));
    }
}
