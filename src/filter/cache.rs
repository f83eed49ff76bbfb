//! What a route's cache (the `cache` policy) answers for Pingora's cache hooks, which the
//! proxy only dispatches to it ([`Filter::cache`]).
//!
//! [`Filter::cache`]: super::Filter::cache

use super::Context;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, HttpCache, RespCacheable};

/// How a request went with its route's cache, as metrics and the access log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served fresh from the cache.
    Hit,
    /// Not in the cache: fetched (and stored if it could be).
    Miss,
    /// Served stale: while revalidating, or because the upstream failed.
    Stale,
    /// A stale entry revalidated by the upstream (`304`).
    Revalidated,
    /// A stale entry replaced by a fresh fetch.
    Expired,
    /// The cache was not used for this request (its method, a `no-store` request).
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 6] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Expired,
        CacheResult::Bypass,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Expired => "expired",
            CacheResult::Bypass => "bypass",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A route's cache.
pub trait RouteCache: Send + Sync {
    /// Turn `cache` on for this request if the cache may answer it (its method, its
    /// `Cache-Control`), with the storage, eviction and lock to use.
    fn enable(&self, cache: &mut HttpCache, req: &RequestHeader, cx: &Context);

    /// The request's key (host, path, query, chosen headers, the consumer, as configured).
    fn key(&self, req: &RequestHeader, cx: &Context) -> CacheKey;

    /// Whether, and until when, the upstream's answer may be stored. After a revalidation,
    /// `resp` is the stored answer's header with some of the `304`'s (Pingora's merge).
    fn cacheable(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        cx: &mut Context,
    ) -> RespCacheable;

    /// The variant of a stored answer with `Vary` this request takes; `None`: no variance.
    fn vary(&self, meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary>;

    /// Whether a stale entry may be served: while it revalidates (`error` is `None`) or in
    /// place of the upstream's failure.
    fn serve_stale(&self, error: Option<&pingora::Error>) -> bool;

    /// The response to the client is about to go out: say how the cache served it
    /// (`Cache-Status`), and return that for metrics and the log. An unsafe method's success
    /// invalidates what is stored for its URI (RFC 9111 §4.4).
    fn respond(
        &self,
        cache: &HttpCache,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &Context,
    ) -> Option<CacheResult>;
}
