//! Which module parses each `kind = "..."`.

use super::{Source, Spec};
use crate::config::ConfigError;
use std::sync::Arc;

/// A kind's parse step: its table (without `kind`) to checked settings, or every error.
pub type Parse = fn(&mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>>;

/// A policy kind: its name in the config and its parse step.
pub struct Kind {
    pub name: &'static str,
    pub parse: Parse,
}

/// Every kind Pylon knows.
pub const KINDS: &[Kind] = &[
    super::api_key::KIND,
    super::basic_auth::KIND,
    super::jwt::KIND,
    super::client_cert::KIND,
    super::acl::KIND,
    super::rate_limit::KIND,
    super::concurrency::KIND,
    super::security_headers::KIND,
    super::cors::KIND,
    super::ip_filter::KIND,
    super::request_limits::KIND,
    super::waf::KIND,
    super::compression::KIND,
    super::transform::REQUEST,
    super::transform::RESPONSE,
];

pub fn find(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The known kinds, for an error message.
pub fn names() -> String {
    KINDS
        .iter()
        .map(|k| format!("`{}`", k.name))
        .collect::<Vec<_>>()
        .join(", ")
}
