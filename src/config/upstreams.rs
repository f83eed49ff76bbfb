//! `[upstreams.NAME]`: targets, discovery, balancing, health checks, breakers, retries.

use super::*;
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Static targets; a pool with `discovery` may have none.
    #[serde(default)]
    pub targets: Vec<Spanned<TargetConfig>>,
    /// Targets found by DNS, SRV records or a watched file, besides the static ones.
    pub discovery: Option<Spanned<DiscoveryConfig>>,
    #[serde(default)]
    pub balancer: Balancer,
    pub hash_on: Option<Spanned<String>>,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfTimeout,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: ConfTimeout,
    #[serde(default = "default_read_timeout")]
    pub write_timeout: ConfTimeout,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfTimeout,
    /// How long a WebSocket (upgraded) connection's target may send nothing; its 101 is waited
    /// for as long.
    #[serde(default = "default_tunnel_idle_timeout")]
    pub tunnel_idle_timeout: ConfTimeout,
    #[serde(default = "default_retries")]
    pub retries: usize,
    #[serde(default)]
    pub tls: bool,
    /// TLS server name; default: the target's host.
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
    /// CA certificates (PEM) the targets' certificates are verified against, instead of the
    /// system's.
    pub ca: Option<Spanned<String>>,
    /// HTTP/2 to the targets: offered by ALPN over TLS (HTTP/1.1 if a target declines), by
    /// prior knowledge in plain text.
    #[serde(default)]
    pub h2: bool,
    /// Passive health: a breaker per target, fed by every attempt's outcome.
    pub circuit_breaker: Option<Spanned<CircuitBreakerConfig>>,
    /// Requests in flight to the pool at once; beyond it, 503.
    pub max_inflight: Option<NonZeroUsize>,
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    #[serde(default)]
    pub retry_backoff: BackoffConfig,
    /// A target that joins or returns ramps up its share of traffic over this long.
    pub slow_start: Option<ConfTimeout>,
}

/// `circuit_breaker = { ... }`: when a target stops getting traffic, and how it comes back.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker; 0: only `failure_rate` does.
    #[serde(default = "default_cb_failures")]
    pub failures: u32,
    /// Share of failed attempts over `window` that opens it, once `min_requests` were seen.
    pub failure_rate: Option<f64>,
    #[serde(default = "default_cb_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_cb_window")]
    pub window: ConfTimeout,
    /// How long an opened breaker keeps the target out, the first time.
    #[serde(default = "default_cb_open_for")]
    pub open_for: ConfTimeout,
    /// The cap on `open_for` as it doubles for a target that keeps failing its probes.
    pub max_open_for: Option<ConfTimeout>,
    /// Probes let through when half-open; all must succeed to close it.
    #[serde(default = "default_cb_half_open")]
    pub half_open_requests: NonZeroU32,
    /// The most of a pool that breakers may hold out at once.
    #[serde(default = "default_cb_ejection")]
    pub max_ejection_percent: u8,
}

fn default_cb_failures() -> u32 {
    5
}
fn default_cb_min_requests() -> u32 {
    20
}
fn default_cb_window() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(10))
}
fn default_cb_open_for() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(30))
}
fn default_cb_half_open() -> NonZeroU32 {
    NonZeroU32::MIN
}
fn default_cb_ejection() -> u8 {
    50
}

/// `retry_budget = { percent, min_per_second }`: retries add at most `percent` to the load
/// (over the last 10 s), and `min_per_second` are always allowed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: default_budget_percent(),
            min_per_second: default_budget_floor(),
        }
    }
}

fn default_budget_percent() -> u32 {
    20
}
fn default_budget_floor() -> u32 {
    10
}

/// `retry_backoff = { base, max }`: the wait before a retry is random up to `base` doubled
/// per retry, capped at `max` ("full jitter").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_base")]
    pub base: ConfDuration,
    #[serde(default = "default_backoff_max")]
    pub max: ConfDuration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> ConfDuration {
    ConfDuration(Duration::from_millis(25))
}
fn default_backoff_max() -> ConfDuration {
    ConfDuration(Duration::from_millis(250))
}

/// `discovery = { kind, ... }`: where a pool finds targets besides its static ones.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub kind: DiscoveryKind,
    /// The DNS name (`dns`: A/AAAA; `srv`: the SRV name, `_http._tcp.orders.internal`).
    pub name: Option<Spanned<String>>,
    /// The targets' port (`dns` only; SRV records carry their own).
    pub port: Option<u16>,
    /// The watched file (`file`): `targets = [...]` in TOML, or JSON `{"targets": [...]}`.
    pub path: Option<Spanned<PathBuf>>,
    /// How often to look again (DNS: sooner when the records' TTL runs out first).
    #[serde(default = "default_discovery_interval")]
    pub interval: ConfTimeout,
    /// The DNS server, `IP` or `IP:PORT`; default: `/etc/resolv.conf`.
    pub resolver: Option<Spanned<String>>,
    /// Never re-resolve more often than this, whatever the TTL says; default 1 s, or the
    /// `interval` when that is shorter.
    pub min_ttl: Option<ConfTimeout>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    Dns,
    Srv,
    File,
}

fn default_discovery_interval() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(5))
}

fn default_connect_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(5))
}
fn default_read_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(60))
}
fn default_tunnel_idle_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(3600))
}

fn default_idle_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(60))
}
fn default_retries() -> usize {
    1
}

/// One target: `"10.0.0.1:8080"` or `{ addr = "10.0.0.1:8080", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "a target \"host:port\" or { addr = \"host:port\", weight = N }"
)]
pub enum TargetConfig {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default = "one")]
        weight: usize,
    },
}

fn one() -> usize {
    1
}

/// Weighted selection expands each target `weight` times; this bounds its memory.
pub const MAX_WEIGHT: usize = 1000;
/// Pingora tries a request at most 16 times; stay below it so our count decides.
pub const MAX_RETRIES: usize = 10;

/// Resolve a target address once, at load; names are not re-resolved (use discovery for that).
pub fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.parse()
        .ok()
        .or_else(|| addr.to_socket_addrs().ok()?.next())
}

impl TargetConfig {
    pub fn addr(&self) -> &str {
        match self {
            TargetConfig::Addr(a) => a,
            TargetConfig::Weighted { addr, .. } => addr,
        }
    }
    pub fn weight(&self) -> usize {
        match self {
            TargetConfig::Addr(_) => 1,
            TargetConfig::Weighted { weight, .. } => *weight,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    #[default]
    RoundRobin,
    Random,
    LeastRequests,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    #[serde(default = "default_hc_path")]
    pub path: Spanned<String>,
    /// `Host` header of HTTP checks; default: the target address.
    pub host: Option<String>,
    #[serde(default = "default_hc_interval")]
    pub interval: ConfTimeout,
    #[serde(default = "default_hc_timeout")]
    pub timeout: ConfTimeout,
    /// Consecutive successes before an unhealthy target is healthy again.
    #[serde(default = "default_hc_healthy")]
    pub healthy: NonZeroUsize,
    /// Consecutive failures before a healthy target leaves rotation.
    #[serde(default = "default_hc_unhealthy")]
    pub unhealthy: NonZeroUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    Http,
    Tcp,
}

fn default_hc_path() -> Spanned<String> {
    Spanned::new(0..0, "/".to_string())
}
fn default_hc_interval() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(5))
}
fn default_hc_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(1))
}
fn default_hc_healthy() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(1)
}
fn default_hc_unhealthy() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(2)
}
