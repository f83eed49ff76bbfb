//! `[[routes]]`: what a route matches and what it does (an upstream, a fixed answer, an
//! aggregate), with its rewrite and fallback.

use super::*;

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
    /// Weighted backends instead of one upstream.
    pub split: Option<Spanned<Vec<SplitBackendConfig>>>,
    /// How a client stays on one backend of the split: `cookie:NAME`, `header:NAME`,
    /// `consumer`.
    pub sticky: Option<Spanned<String>>,
    /// The sticky cookie's lifetime.
    #[serde(default = "super::split::default_sticky_max_age")]
    pub sticky_max_age: ConfDuration,
    /// Sticky clients of a backend at weight 0 move to the others (`true`) or stay.
    #[serde(default = "yes")]
    pub drain_sticky: bool,
    pub respond: Option<RespondConfig>,
    /// Several backend calls merged into one JSON answer.
    pub aggregate: Option<Spanned<AggregateConfig>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<RewriteConfig>,
    #[serde(default)]
    pub preserve_host: bool,
    /// The whole request's deadline, across retries.
    pub timeout: Option<ConfTimeout>,
    /// Names of `[policies.NAME]`, run in order after the global ones.
    #[serde(default)]
    pub policies: Vec<Spanned<String>>,
    /// The answer when no target of the upstream can take the request.
    pub fallback: Option<FallbackConfig>,
    /// A sampled copy of each request to a shadow upstream, fire and forget.
    pub mirror: Option<Spanned<MirrorConfig>>,
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

/// `fallback = { status, body, content_type, headers, grpc_status, grpc_message }`.
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
    /// What a gRPC call gets instead, by name (`"UNAVAILABLE"`); default: the code `status`
    /// maps to.
    pub grpc_status: Option<Spanned<String>>,
    /// The gRPC call's `grpc-message`; default: `body`.
    pub grpc_message: Option<String>,
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
