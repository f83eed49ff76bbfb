//! The configuration as written by the user: plain serde structs, parsed once.
//!
//! A file is parsed into a spanned TOML tree first, then every section (each route, each upstream)
//! is deserialized on its own. A mistake in one route therefore does not hide a mistake in the
//! next: `pylon -t` reports every error it can find, each with `file:line:col`. The structs are
//! then checked for meaning (see [`validate`]) and handed to the runtime compiler; nothing here is
//! used on the request path.

mod pattern;
mod secret;
mod units;
pub mod validate;

pub use pattern::{PathSpec, Pattern};
pub use secret::Secret;
pub use units::{ConfDuration, ConfSize, ConfTimeout};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// The whole configuration file. Serializes (for `GET /config`) without its source text,
/// which may hold inline secrets; secrets themselves serialize redacted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    /// Where it was read from, to place errors found after parsing.
    #[serde(skip)]
    pub source: Source,
    pub server: ServerConfig,
    /// The admin listener; absent: no admin API.
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub upstreams: BTreeMap<String, Located<UpstreamConfig>>,
    pub routes: Vec<Located<RouteConfig>>,
    pub policies: BTreeMap<String, Located<PolicyConfig>>,
    pub consumers: BTreeMap<String, Located<ConsumerConfig>>,
}

/// A value together with the byte range of the table it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Located<T> {
    pub value: T,
    #[serde(skip)]
    pub span: Range<usize>,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: Vec<Spanned<String>>,
    /// Worker threads; default: the number of CPUs.
    pub threads: Option<NonZeroUsize>,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    #[serde(default = "default_grace_period")]
    pub grace_period: ConfDuration,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfDuration,
    /// How long an idle client keep-alive connection stays open between requests.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Spanned<ConfDuration>,
    /// Requests served on one client connection before it is closed; none: no limit.
    pub keepalive_requests: Option<NonZeroU32>,
    /// The most a client may take to send a whole request header, from its first byte; a
    /// slower one (slowloris) is disconnected.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfTimeout,
    /// The most a client may pause between two reads of a request body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: ConfTimeout,
    /// Connections one client address may hold open at once (trusted proxies exempt).
    #[serde(default = "default_connections_per_ip")]
    pub max_connections_per_ip: NonZeroU32,
    /// Idle upstream connections kept for reuse per worker thread, all pools together: at
    /// least the requests a thread has in flight at once, or connections churn.
    #[serde(default = "default_upstream_keepalive")]
    pub upstream_keepalive: NonZeroUsize,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Pingora's work-stealing runtime; off gives each thread its own queue.
    #[serde(default = "yes")]
    pub work_stealing: bool,
    /// Reload when the config file changes (checked once a second), besides `SIGHUP`.
    #[serde(default)]
    pub watch: bool,
    /// Policies run on every route, before the route's own.
    #[serde(default)]
    pub global_policies: Vec<Spanned<String>>,
    /// TLS listeners (`[[server.tls]]`), each with its certificates.
    #[serde(default)]
    pub tls: Vec<TlsListenerConfig>,
}

/// One `[[server.tls]]` listener: an address, its certificates by server name, and how it
/// treats client certificates.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub listen: Spanned<String>,
    pub certificates: Spanned<Vec<CertificateConfig>>,
    /// The certificate (an index into `certificates`) for clients that send no server name,
    /// or one no certificate is for.
    pub default_certificate: Option<Spanned<usize>>,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 stays available).
    #[serde(default = "yes")]
    pub h2: bool,
    /// CA certificates (PEM) that client certificates are verified against: mTLS.
    pub client_ca: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<ClientAuth>>,
}

/// A certificate chain and its key, for the server names in `hosts`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Exact names and `*.example.com` wildcards; absent: the names the certificate is for
    /// (its DNS subject alternative names, or its common name).
    pub hosts: Option<Vec<Spanned<String>>>,
    /// PEM: the certificate first, then its intermediates.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// Whether a client certificate is asked for or needed, on a listener with `client_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Asked for; a client without one connects, one with a bad one does not.
    Optional,
    /// Needed to connect at all.
    Required,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            threads: None,
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            grace_period: default_grace_period(),
            shutdown_timeout: default_shutdown_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            keepalive_requests: None,
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            max_connections_per_ip: default_connections_per_ip(),
            upstream_keepalive: default_upstream_keepalive(),
            trusted_proxies: Vec::new(),
            work_stealing: true,
            watch: false,
            global_policies: Vec::new(),
            tls: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listen() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "0.0.0.0:8080".to_string())]
}
fn default_pid_file() -> String {
    "/tmp/pylon.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/pylon_upgrade.sock".into()
}
fn default_grace_period() -> ConfDuration {
    ConfDuration(Duration::from_secs(30))
}
fn default_connections_per_ip() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(999)
}
fn default_upstream_keepalive() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(127)
}
fn default_header_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(10))
}
fn default_body_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(30))
}
fn default_keepalive_timeout() -> Spanned<ConfDuration> {
    Spanned::new(0..0, ConfDuration(Duration::from_secs(60)))
}
fn default_shutdown_timeout() -> ConfDuration {
    ConfDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    /// Required for every mutating call; without it they are refused.
    pub token: Option<Secret>,
}

fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_string())
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: LogLevel,
    /// `"stdout"`, a file path, or `"off"`.
    #[serde(default = "default_access_log")]
    pub access_log: String,
}

/// `[tracing]`: OpenTelemetry export of one span per request. Off without an endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP (protobuf) traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: Option<Spanned<String>>,
    /// Share of new traces recorded; a client's `traceparent` sampled flag decides for its own.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Spanned<f64>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Longest wait for the collector per batch.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: ConfTimeout,
    /// How often queued spans are sent.
    #[serde(default = "default_export_interval")]
    pub export_interval: ConfTimeout,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            service_name: default_service_name(),
            export_timeout: default_export_timeout(),
            export_interval: default_export_interval(),
        }
    }
}

fn default_sample_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

fn default_service_name() -> String {
    "pylon".into()
}

fn default_export_interval() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(1))
}

fn default_export_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(10))
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            access_log: default_access_log(),
        }
    }
}

impl LogConfig {
    /// Where the access log goes; `None` when it is off.
    pub fn access_log_destination(&self) -> Option<crate::access_log::Destination> {
        use crate::access_log::Destination;
        match self.access_log.as_str() {
            "off" => None,
            "stdout" => Some(Destination::Stdout),
            path => Some(Destination::File(path.into())),
        }
    }
}

fn default_access_log() -> String {
    "off".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn default_level() -> LogLevel {
    LogLevel::Info
}

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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<PathSpec>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: i32,
    pub upstream: Option<Spanned<String>>,
    pub respond: Option<RespondConfig>,
    /// Several backend calls merged into one JSON answer.
    pub aggregate: Option<Spanned<AggregateConfig>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<RewriteConfig>,
    #[serde(default)]
    pub preserve_host: bool,
    /// Names of `[policies.NAME]`, run in order after the global ones.
    #[serde(default)]
    pub policies: Vec<Spanned<String>>,
    /// The answer when no target of the upstream can take the request.
    pub fallback: Option<FallbackConfig>,
}

/// `aggregate = { timeout, max_body, forward_headers, parts = [...] }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The whole aggregate's deadline: parts still out then have timed out.
    #[serde(default = "default_aggregate_timeout")]
    pub timeout: ConfTimeout,
    /// The largest body one part may answer with.
    #[serde(default = "default_aggregate_max_body")]
    pub max_body: ConfSize,
    /// Client request headers copied to every part (besides the request id, trace context,
    /// consumer and forwarding headers every upstream request gets).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    pub parts: Vec<PartConfig>,
}

/// One call of an aggregate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartConfig {
    /// Where its JSON goes in the answer.
    pub key: Spanned<String>,
    pub upstream: Spanned<String>,
    /// Path and query, with `{jwt.<claim>}`, `{path.<name>}`, `{query.<name>}`.
    pub path: Spanned<String>,
    /// A failed optional part is `null` and listed in `_errors`; a failed required one fails
    /// the request.
    #[serde(default)]
    pub optional: bool,
    pub timeout: Option<ConfTimeout>,
    /// Replaces the aggregate's `forward_headers` for this part.
    pub forward_headers: Option<Vec<String>>,
}

fn default_aggregate_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(5))
}

fn default_aggregate_max_body() -> ConfSize {
    ConfSize(1 << 20)
}

/// `fallback = { status, body, content_type, headers }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default = "default_fallback_status")]
    pub status: Spanned<u16>,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_fallback_status() -> Spanned<u16> {
    Spanned::new(0..0, 503)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "default_status")]
    pub status: Spanned<u16>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> Spanned<u16> {
    Spanned::new(0..0, 200)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    pub pattern: Spanned<Pattern>,
    pub to: Spanned<String>,
}

/// `[policies.NAME]`: a policy of one kind, parsed and checked by its kind's module
/// ([`crate::policy::registry`]); routes name policies.
#[derive(Clone)]
pub struct PolicyConfig {
    pub kind: &'static str,
    pub spec: Arc<dyn crate::policy::Spec>,
}

impl fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.spec)
    }
}

impl Serialize for PolicyConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut settings = match self.spec.describe() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        settings.insert("kind".into(), self.kind.into());
        settings.serialize(serializer)
    }
}

/// `[consumers.NAME]`: a known client of the API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// `"sha256:<hex>"` (preferred) or the key itself (warned about at load).
    #[serde(default)]
    pub api_keys: Vec<Spanned<Secret>>,
    /// `{ user = "alice", password_hash = "$2b$..." }`: a bcrypt hash, as in htpasswd.
    pub basic_auth: Option<Spanned<BasicCredential>>,
    /// The value of a `jwt` policy's `consumer_claim` that identifies this consumer.
    pub jwt_subject: Option<Spanned<String>>,
    /// The common name of a verified client certificate (mTLS) that identifies this consumer.
    pub client_cert: Option<Spanned<String>>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub user: String,
    pub password_hash: Secret,
}

/// A configuration file's path and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl ConfigError {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            span: Some(span),
            message: message.into(),
        }
    }
}

/// Every problem found in one file, printable as `FILE:LINE:COL: message` lines.
#[derive(Debug)]
pub struct Diagnostics {
    pub path: PathBuf,
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl Diagnostics {
    pub fn new(source: &Source, errors: Vec<ConfigError>) -> Self {
        Diagnostics {
            path: source.path.clone(),
            source: source.text.clone(),
            errors,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = &self.source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let (line, col) = e.span.as_ref().map_or((1, 1), |s| self.line_col(s.start));
            // toml's messages can run over several lines; keep one error per line.
            let msg = e.message.trim().replace('\n', " ");
            write!(f, "{}:{line}:{col}: {msg}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let source = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        path: path.to_path_buf(),
        source: String::new(),
        errors: vec![ConfigError {
            span: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, source)
}

/// Parse and validate configuration text; `path` is only used in messages and to resolve
/// relative paths.
pub fn parse(path: &Path, source: String) -> Result<Config, Diagnostics> {
    let mut errors = Vec::new();
    let mut unparsed = Vec::new();
    let mut config = parse_sections(&source, &mut errors, &mut unparsed);
    // Check meaning even when some sections failed to parse, so one run shows everything;
    // names of sections that failed still count as defined.
    validate::check(&config, &unparsed, &mut errors);
    if errors.is_empty() {
        config.source = Source {
            path: path.to_path_buf(),
            text: source,
        };
        Ok(config)
    } else {
        errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
        Err(Diagnostics {
            path: path.to_path_buf(),
            source,
            errors,
        })
    }
}

fn toml_error(e: toml::de::Error, fallback: &Range<usize>) -> ConfigError {
    ConfigError {
        span: Some(e.span().unwrap_or_else(|| fallback.clone())),
        message: e.message().to_string(),
    }
}

fn section<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Located<T>> {
    let span = value.span();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(value) => Some(Located { value, span }),
        Err(e) => {
            errors.push(toml_error(e, &span));
            None
        }
    }
}

/// `unparsed` receives the names of upstreams and policies that exist but failed to deserialize.
fn parse_sections(
    source: &str,
    errors: &mut Vec<ConfigError>,
    unparsed: &mut Vec<String>,
) -> Config {
    let (root, syntax) = toml::de::DeTable::parse_recoverable(source);
    let mut config = Config::default();
    let mut policies = Vec::new();
    if !syntax.is_empty() {
        errors.extend(syntax.into_iter().map(|e| toml_error(e, &(0..0))));
        return config;
    }
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "server" => {
                if let Some(s) = section(value, errors) {
                    config.server = s.value;
                }
            }
            "admin" => {
                if let Some(s) = section(value, errors) {
                    config.admin = Some(s.value);
                }
            }
            "log" => {
                if let Some(s) = section(value, errors) {
                    config.log = s.value;
                }
            }
            "tracing" => {
                if let Some(s) = section(value, errors) {
                    config.tracing = s.value;
                }
            }
            "upstreams" => {
                for_each_entry(value, errors, "upstreams", |name, v, errors| {
                    match section(v, errors) {
                        Some(u) => {
                            config.upstreams.insert(name, u);
                        }
                        None => unparsed.push(name),
                    }
                });
            }
            "policies" => {
                // Parsed once the consumers are known: some checks name them.
                for_each_entry(value, errors, "policies", |name, v, _| {
                    policies.push((name, v));
                });
            }
            "consumers" => {
                for_each_entry(value, errors, "consumers", |name, v, errors| {
                    if let Some(c) = section(v, errors) {
                        config.consumers.insert(name, c);
                    }
                });
            }
            "routes" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Array(items) => {
                        for item in items {
                            if let Some(r) = section(item, errors) {
                                config.routes.push(r);
                            }
                        }
                    }
                    _ => errors.push(ConfigError::at(
                        span,
                        "`routes` must be an array of tables ([[routes]])",
                    )),
                }
            }
            other => errors.push(ConfigError::at(
                key_span,
                format!(
                    "unknown section `{other}`; expected one of `server`, `admin`, `log`, `tracing`, `upstreams`, `routes`, `policies`, `consumers`"
                ),
            )),
        }
    }
    for (name, value) in policies {
        match parse_policy(&name, value, &config.consumers) {
            Ok(p) => {
                config.policies.insert(name, p);
            }
            Err(e) => {
                errors.extend(e);
                unparsed.push(name);
            }
        }
    }
    config
}

/// One `[policies.NAME]`: its `kind` picks the module that parses and checks the rest.
fn parse_policy(
    name: &str,
    value: Spanned<DeValue<'_>>,
    consumers: &BTreeMap<String, Located<ConsumerConfig>>,
) -> Result<Located<PolicyConfig>, Vec<ConfigError>> {
    use crate::policy::{registry, Place, Source};
    let span = value.span();
    let place = Place {
        name: name.to_string(),
        span: span.clone(),
    };
    let DeValue::Table(mut table) = value.into_inner() else {
        return Err(vec![place.error("expected a table")]);
    };
    let kind = match table.remove("kind").map(|k| (k.span(), k.into_inner())) {
        Some((kspan, DeValue::String(k))) => match registry::find(&k) {
            Some(kind) => kind,
            None => {
                return Err(vec![ConfigError::at(
                    kspan,
                    format!(
                        "policy `{name}`: unknown kind `{k}`; expected one of {}",
                        registry::names()
                    ),
                )])
            }
        },
        Some((kspan, _)) => return Err(vec![ConfigError::at(kspan, "`kind` must be a string")]),
        None => {
            return Err(vec![place.error(format!(
                "missing `kind`; expected one of {}",
                registry::names()
            ))])
        }
    };
    let value = Spanned::new(span.clone(), DeValue::Table(table));
    let spec = (kind.parse)(&mut Source::new(place, value, consumers))?;
    Ok(Located {
        value: PolicyConfig {
            kind: kind.name,
            spec,
        },
        span,
    })
}

/// Visit the entries of a `[section.NAME]` table.
fn for_each_entry<'i>(
    value: Spanned<DeValue<'i>>,
    errors: &mut Vec<ConfigError>,
    section: &str,
    mut f: impl FnMut(String, Spanned<DeValue<'i>>, &mut Vec<ConfigError>),
) {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(table) => {
            for (name, v) in table {
                f(name.into_inner().into_owned(), v, errors);
            }
        }
        _ => errors.push(ConfigError::at(
            span,
            format!("`{section}` must be a table of named entries ([{section}.NAME])"),
        )),
    }
}
