//! Prometheus metrics, named as the contract fixes them.
//!
//! Labels are bounded: route and upstream names from the config, methods folded to the standard
//! set, status codes; never raw paths or client addresses. The request path must not take a
//! shared lock: a route resolves its labelled series once per (method, status) pair and keeps
//! them in lock-free slots, so a request only bumps atomics.

use crate::consumer::Identity;
use crate::filter::CacheResult;
use crate::grpc::{self, Code};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

/// Buckets from 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Label for requests that matched no route.
pub const NO_ROUTE: &str = "_none";

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub target_healthy: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub access_log_dropped: IntCounter,
    pub cache_lock_wait: Histogram,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    pub consumer_requests: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub upstream_retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub upstream_unavailable: IntCounterVec,
    pub discovery_errors: IntCounterVec,
    pub body_transforms_skipped: IntCounterVec,
    pub blocked_requests: IntCounterVec,
    pub grpc_requests: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_size: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
    pub cache_evictions: IntCounterVec,
    pub cache_disk_skipped: IntCounterVec,
    pub split_requests: IntCounterVec,
    pub split_weight: IntGaugeVec,
    pub canary_steps: IntCounterVec,
    pub canary_rollbacks: IntCounterVec,
    pub mirror_requests: IntCounterVec,
    pub websocket_open: IntGaugeVec,
    pub websocket_total: IntCounterVec,
    pub tls_expiry: IntGaugeVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are fixed and distinct: registration cannot collide.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, label: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &[label],
            )
            .expect("valid histogram")
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        Metrics {
            breaker_state: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pylon_circuit_breaker_state",
                        "Circuit breaker of each target: 0 closed, 1 half-open, 2 open",
                    ),
                    &["upstream", "target"],
                )
                .expect("valid gauge"),
            ),
            upstream_retries: counters(
                "pylon_upstream_retries_total",
                "Retries to another target, by what failed",
                &["upstream", "reason"],
            ),
            retry_budget_exhausted: counters(
                "pylon_retry_budget_exhausted_total",
                "Retries not made because the upstream's retry budget was spent",
                &["upstream"],
            ),
            upstream_ejections: counters(
                "pylon_upstream_ejections_total",
                "Targets taken out of rotation by their circuit breaker",
                &["upstream"],
            ),
            upstream_unavailable: counters(
                "pylon_upstream_unavailable_total",
                "Requests no target could take: no target in rotation, or max_inflight reached",
                &["upstream", "reason"],
            ),
            discovery_errors: counters(
                "pylon_discovery_errors_total",
                "Service discovery lookups that failed (the last good targets are kept)",
                &["upstream"],
            ),
            grpc_requests: counters(
                "pylon_grpc_requests_total",
                "gRPC calls answered, by route and grpc-status (by name)",
                &["route", "code"],
            ),
            cache_requests: counters(
                "pylon_cache_requests_total",
                "Requests on routes with a cache, by how the cache served them (hit, miss, stale, \
                 revalidated, expired, bypass)",
                &["route", "result"],
            ),
            cache_size: gauges(
                "pylon_cache_size_bytes",
                "Bytes of answers stored in the cache, by tier",
                &["tier"],
            ),
            cache_entries: gauges(
                "pylon_cache_entries",
                "Answers stored in the cache, by tier",
                &["tier"],
            ),
            cache_evictions: counters(
                "pylon_cache_evictions_total",
                "Entries removed from the cache to make room, by tier",
                &["tier"],
            ),
            split_requests: counters(
                "pylon_split_requests_total",
                "Requests of a route with a split, by the backend (upstream) that took them",
                &["route", "backend"],
            ),
            tls_expiry: gauges(
                "pylon_tls_certificate_expiry_timestamp_seconds",
                "When each certificate a TLS listener serves expires (its notAfter, Unix time)",
                &["listener", "name"],
            ),
            split_weight: gauges(
                "pylon_split_weight",
                "A split backend's weight now (the file's, an operator's or its canary's)",
                &["route", "backend"],
            ),
            canary_steps: counters(
                "pylon_canary_steps_total",
                "Times a canary backend's weight stepped up",
                &["route", "backend"],
            ),
            canary_rollbacks: counters(
                "pylon_canary_rollbacks_total",
                "Times a canary backend was rolled back to weight 0 (by its thresholds or an operator)",
                &["route", "backend"],
            ),
            mirror_requests: counters(
                "pylon_mirror_requests_total",
                "Requests of a mirrored route by what became of their copy: sent, skipped_sample, \
                 skipped_body, dropped (max_inflight), error (no answer from the shadow), mismatch \
                 (compare: another status class than the primary's)",
                &["route", "result"],
            ),
            cache_disk_skipped: counters(
                "pylon_cache_disk_skipped_total",
                "Disk tier operations not done: writes dropped while the disk was behind \
                 (queue_full) or failed (io_error)",
                &["reason"],
            ),
            blocked_requests: counters(
                "pylon_blocked_requests_total",
                "Requests refused by a security policy (ip_filter), by reason",
                &["route", "policy", "reason"],
            ),
            body_transforms_skipped: counters(
                "pylon_body_transforms_skipped_total",
                "Bodies a transform left as they came: another content type or charset, an \
                 encoding without a decoder, or not parseable",
                &["policy", "reason"],
            ),
            requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pylon_requests_total",
                        "Requests answered, by route, method and status",
                    ),
                    &["route", "method", "status"],
                )
                .expect("valid counter"),
            ),
            request_duration: register(
                &registry,
                hist(
                    "pylon_request_duration_seconds",
                    "Whole request duration in the gateway",
                    "route",
                ),
            ),
            upstream_duration: register(
                &registry,
                hist(
                    "pylon_upstream_duration_seconds",
                    "Time from picking a target to its response header",
                    "upstream",
                ),
            ),
            target_healthy: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pylon_upstream_target_healthy",
                        "1 when the target is in rotation",
                    ),
                    &["upstream", "target"],
                )
                .expect("valid gauge"),
            ),
            config_reloads: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pylon_config_reloads_total",
                        "Configuration reloads by result",
                    ),
                    &["result"],
                )
                .expect("valid counter"),
            ),
            inflight: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("pylon_inflight_requests", "Requests in progress, by route"),
                    &["route"],
                )
                .expect("valid gauge"),
            ),
            websocket_open: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pylon_websocket_connections",
                        "Upgraded (WebSocket) tunnels open now, by route",
                    ),
                    &["route"],
                )
                .expect("valid gauge"),
            ),
            websocket_total: counters(
                "pylon_websocket_connections_total",
                "Upgraded (WebSocket) tunnels opened, by route",
                &["route"],
            ),
            cache_lock_wait: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pylon_cache_lock_wait_seconds",
                        "How long a cache miss waited for another request fetching the same key",
                    )
                    .buckets(BUCKETS.to_vec()),
                )
                .expect("valid histogram"),
            ),
            access_log_dropped: register(
                &registry,
                IntCounter::new(
                    "pylon_access_log_dropped_total",
                    "Access log lines dropped because the writer fell behind",
                )
                .expect("valid counter"),
            ),
            auth_failures: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pylon_auth_failures_total",
                        "Requests refused by an auth policy",
                    ),
                    &["route", "policy", "reason"],
                )
                .expect("valid counter"),
            ),
            rate_limited: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pylon_rate_limited_total",
                        "Requests refused by a rate or concurrency limit",
                    ),
                    &["route", "policy"],
                )
                .expect("valid counter"),
            ),
            rate_limit_store_errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pylon_rate_limit_store_errors_total",
                        "Rate-limit checks the shared store (Redis) failed to answer in time",
                    ),
                    &["policy"],
                )
                .expect("valid counter"),
            ),
            consumer_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pylon_consumer_requests_total",
                        "Requests by consumer (anonymous without one), route and status class",
                    ),
                    &["consumer", "route", "status_class"],
                )
                .expect("valid counter"),
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Methods get a bounded label: the standard ones, everything else is `OTHER`.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

fn method_index(m: &http::Method) -> usize {
    METHODS
        .iter()
        .position(|x| *x == m.as_str())
        .unwrap_or(METHODS.len())
}

fn method_label(i: usize) -> &'static str {
    METHODS.get(i).copied().unwrap_or("OTHER")
}

/// Statuses with a lock-free slot; rarer ones take the labelled lookup.
const STATUSES: [u16; 30] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409,
    410, 413, 415, 422, 429, 431, 500, 501, 502, 503, 504,
];

/// Status classes of `pylon_consumer_requests_total`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One consumer's usage series on one route, by status class, each made on first use.
type Usage = [OnceLock<IntCounter>; 5];

/// The usage of the consumer at one index, with its name: a consumer kept in a credential
/// cache across a reload carries the index it had then, which may now be another's.
struct Slot {
    name: Arc<str>,
    usage: Usage,
}

/// The series of one route, resolved once and then updated with atomics only.
pub struct RouteMetrics {
    name: Arc<str>,
    duration: Histogram,
    inflight: IntGauge,
    /// (method, common status) → counter, filled on first use; allocated on the route's first
    /// request, so routes without traffic cost nothing.
    counters: OnceLock<Box<[OnceLock<IntCounter>]>>,
    /// Usage of requests without a consumer.
    anonymous: Usage,
    /// Usage per consumer, by the consumer's index; a slot's counters are made when that
    /// consumer first uses the route.
    consumers: OnceLock<Box<[OnceLock<Box<Slot>>]>>,
    consumer_count: usize,
    /// gRPC calls by code, allocated on the route's first gRPC call.
    grpc: OnceLock<Box<[OnceLock<IntCounter>; grpc::CODES]>>,
    /// Cache results, allocated on the route's first cached request.
    cache: OnceLock<Box<[OnceLock<IntCounter>; 6]>>,
    /// Tunnels open now and opened, resolved on the route's first.
    tunnels: OnceLock<(IntGauge, IntCounter)>,
}

impl RouteMetrics {
    /// `consumers`: how many consumers the configuration indexes.
    pub fn new(name: &str, consumers: usize) -> RouteMetrics {
        let m = &*METRICS;
        RouteMetrics {
            name: name.into(),
            duration: m.request_duration.with_label_values(&[name]),
            inflight: m.inflight.with_label_values(&[name]),
            counters: OnceLock::new(),
            anonymous: Default::default(),
            consumers: OnceLock::new(),
            consumer_count: consumers,
            grpc: OnceLock::new(),
            cache: OnceLock::new(),
            tunnels: OnceLock::new(),
        }
    }

    /// Count one finished request in `pylon_consumer_requests_total`.
    pub fn record_usage(&self, identity: &Identity, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let series = |consumer: &str| {
            METRICS
                .consumer_requests
                .with_label_values(&[consumer, &self.name, CLASSES[class]])
        };
        let Some(consumer) = identity.consumer.as_deref() else {
            self.anonymous[class]
                .get_or_init(|| series("anonymous"))
                .inc();
            return;
        };
        let slot = consumer
            .index
            .filter(|i| *i < self.consumer_count)
            .map(|i| {
                let all = self
                    .consumers
                    .get_or_init(|| (0..self.consumer_count).map(|_| OnceLock::new()).collect());
                all[i].get_or_init(|| {
                    Box::new(Slot {
                        name: Arc::clone(&consumer.name),
                        usage: Default::default(),
                    })
                })
            });
        match slot.filter(|s| s.name == consumer.name) {
            Some(slot) => slot.usage[class]
                .get_or_init(|| series(&consumer.name))
                .inc(),
            // A consumer only an htpasswd file knows, or one from before a reload whose index
            // is now another's: the labelled lookup.
            None => series(&consumer.name).inc(),
        }
    }

    /// Count one finished request.
    pub fn record(&self, method: &http::Method, status: u16, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        let mi = method_index(method);
        let series = || {
            METRICS.requests.with_label_values(&[
                &*self.name,
                method_label(mi),
                &status.to_string(),
            ])
        };
        let Some(si) = STATUSES.iter().position(|s| *s == status) else {
            series().inc();
            return;
        };
        let slots = self.counters.get_or_init(|| {
            (0..(METHODS.len() + 1) * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect()
        });
        slots[mi * STATUSES.len() + si].get_or_init(series).inc();
    }

    /// Count one finished gRPC call in `pylon_grpc_requests_total`.
    pub fn record_grpc(&self, code: Code) {
        let slots = self.grpc.get_or_init(Default::default);
        slots[code.index()]
            .get_or_init(|| {
                let labels = [&*self.name, code.name()];
                METRICS.grpc_requests.with_label_values(&labels)
            })
            .inc();
    }

    /// Count how the route's cache served a request in `pylon_cache_requests_total`.
    pub fn record_cache(&self, result: CacheResult) {
        let slots = self.cache.get_or_init(Default::default);
        slots[result.index()]
            .get_or_init(|| {
                let labels = [&*self.name, result.name()];
                METRICS.cache_requests.with_label_values(&labels)
            })
            .inc();
    }

    /// Count a tunnel (a `101` to an upgrade) as open until the guard drops, and as opened.
    pub fn tunnel(self: &Arc<Self>) -> OpenTunnel {
        let (open, total) = self.tunnels.get_or_init(|| {
            let route = [&*self.name];
            (
                METRICS.websocket_open.with_label_values(&route),
                METRICS.websocket_total.with_label_values(&route),
            )
        });
        open.inc();
        total.inc();
        OpenTunnel(Arc::clone(self))
    }

    /// Count a request in progress until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InflightRoute {
        self.inflight.inc();
        InflightRoute(Arc::clone(self))
    }
}

pub struct InflightRoute(Arc<RouteMetrics>);

impl Drop for InflightRoute {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// An open tunnel in `pylon_websocket_connections` until dropped.
pub struct OpenTunnel(Arc<RouteMetrics>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        if let Some((open, _)) = self.0.tunnels.get() {
            open.dec();
        }
    }
}

/// Series of one upstream pool.
pub struct UpstreamMetrics {
    pub duration: Histogram,
}

impl UpstreamMetrics {
    pub fn new(name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            duration: METRICS.upstream_duration.with_label_values(&[name]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_series_are_counted() {
        let r = Arc::new(RouteMetrics::new("unit-test-route", 0));
        {
            let _g = r.enter();
            assert_eq!(r.inflight.get(), 1);
        }
        assert_eq!(r.inflight.get(), 0);
        r.record(&http::Method::GET, 200, Duration::from_millis(3));
        r.record(&http::Method::GET, 200, Duration::from_millis(3));
        r.record(
            &http::Method::from_bytes(b"PURGE").unwrap(),
            404,
            Duration::from_millis(1),
        );
        r.record(&http::Method::GET, 418, Duration::from_millis(1));
        let teapot = METRICS
            .requests
            .with_label_values(&["unit-test-route", "GET", "418"]);
        assert_eq!(teapot.get(), 1);
        let c = METRICS
            .requests
            .with_label_values(&["unit-test-route", "GET", "200"]);
        assert_eq!(c.get(), 2);
        let other = METRICS
            .requests
            .with_label_values(&["unit-test-route", "OTHER", "404"]);
        assert_eq!(other.get(), 1);
        let mut alice = crate::consumer::Consumer::new("alice", vec![]);
        alice.index = Some(0);
        let keyed = Identity::of(Arc::new(alice));
        let r = RouteMetrics::new("unit-test-usage", 1);
        r.record_usage(&keyed, 200);
        r.record_usage(&keyed, 201);
        r.record_usage(&Identity::default(), 404);
        let usage = |c: &str, class: &str| {
            METRICS
                .consumer_requests
                .with_label_values(&[c, "unit-test-usage", class])
                .get()
        };
        assert_eq!(usage("alice", "2xx"), 2);
        assert_eq!(usage("anonymous", "4xx"), 1);
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(text.contains("pylon_request_duration_seconds_bucket{route=\"unit-test-route\""));
    }
}
