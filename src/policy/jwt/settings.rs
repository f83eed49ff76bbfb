//! A `jwt` policy's settings, as written in its `[policies.NAME]` table.

use crate::config::{ConfDuration, ConfTimeout, Secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The only algorithms this policy accepts (`HS256` ... `EdDSA`).
    pub algorithms: Vec<String>,
    /// Key for the HS* algorithms.
    pub secret: Option<Secret>,
    /// PEM public keys for RS*, PS*, ES* and EdDSA: inline, `file:` or `env:`.
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// A JWKS document, fetched in the background and refreshed every `jwks_refresh`.
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: ConfTimeout,
    /// A token whose `kid` names no known key triggers a refresh at most this often.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: ConfTimeout,
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default)]
    pub leeway: Option<ConfDuration>,
    /// Claims that must be present (`exp` always is).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Scopes that must all be granted, from `scope` (space-separated) or `scp`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Roles of which one must be granted, from `roles_claim`.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Where roles are read: a claim name, dotted for nesting (`realm_access.roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim matched against consumers' `jwt_subject`; the token must then map to a consumer.
    pub consumer_claim: Option<String>,
    /// Claims sent upstream as headers: `{ sub = "x-user-id" }`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered (until their `exp`), so repeats skip the signature check.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default)]
    pub forward_credentials: bool,
    pub anonymous: Option<String>,
}

fn default_jwks_refresh() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(300))
}

fn default_jwks_min_refresh() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(10))
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_max_token_bytes() -> usize {
    8192
}

fn default_cache_size() -> usize {
    10_000
}

fn default_realm() -> String {
    "pylon".into()
}
