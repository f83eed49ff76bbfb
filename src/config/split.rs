//! A route's `split` (weighted backends, each an upstream) and `mirror` (a sampled copy of each
//! request to a shadow upstream).

use super::*;

/// One backend of a `split`: an upstream and its share.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBackendConfig {
    pub upstream: Spanned<String>,
    /// Its share against the other backends' weights; 0 takes no new clients.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests this matches go to this backend whatever the weights.
    #[serde(rename = "match")]
    pub matches: Option<SplitMatchConfig>,
    /// The weight ramps up, and falls to 0 when the backend fails.
    pub canary: Option<Spanned<CanaryConfig>>,
}

fn default_weight() -> u32 {
    1
}

/// What a request must have to be sent to a backend by rule: every part given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitMatchConfig {
    /// Header values, exactly.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Cookie values, exactly.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// Query parameter values, exactly.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The consumer is one of these.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// The consumer is in one of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `canary = { step, every, max_weight, max_error_rate, max_p99, min_requests, window }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// How much the weight rises at each step.
    #[serde(default = "default_step")]
    pub step: u32,
    /// How often it steps.
    #[serde(default = "default_every")]
    pub every: ConfDuration,
    /// Where the ramp stops.
    pub max_weight: u32,
    /// Rolled back past this share of failed requests (5xx, connect failures, timeouts).
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    /// Rolled back when the 99th percentile of its latency passes this.
    pub max_p99: Option<ConfDuration>,
    /// Fewer requests over the window judge nothing.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// What the error rate and p99 are measured over.
    #[serde(default = "default_window")]
    pub window: ConfDuration,
}

fn default_step() -> u32 {
    10
}
fn default_every() -> ConfDuration {
    ConfDuration(Duration::from_secs(60))
}
fn default_error_rate() -> f64 {
    0.05
}
fn default_min_requests() -> u64 {
    100
}
fn default_window() -> ConfDuration {
    ConfDuration(Duration::from_secs(60))
}

pub fn default_sticky_max_age() -> ConfDuration {
    ConfDuration(Duration::from_secs(86_400))
}

/// `mirror = { upstream, percent, max_body, timeout, max_inflight, compare }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The shadow upstream.
    pub upstream: Spanned<String>,
    /// The share of requests copied, 0 to 100.
    #[serde(default = "default_percent")]
    pub percent: f64,
    /// A request with a larger body is not copied.
    #[serde(default = "default_mirror_body")]
    pub max_body: ConfSize,
    /// How long a copy may take, all attempts included.
    #[serde(default = "default_mirror_timeout")]
    pub timeout: ConfTimeout,
    /// Copies in flight at most; past it, new ones are dropped.
    #[serde(default = "default_mirror_inflight")]
    pub max_inflight: usize,
    /// Count copies whose status class differs from the primary's.
    #[serde(default)]
    pub compare: bool,
}

fn default_percent() -> f64 {
    100.0
}
fn default_mirror_body() -> ConfSize {
    ConfSize(64 << 10)
}
fn default_mirror_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(1))
}
fn default_mirror_inflight() -> usize {
    100
}
