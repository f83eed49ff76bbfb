//! Which module parses each `kind = "..."`.

use super::Kind;

/// Every kind Pylon knows.
pub const KINDS: &[Kind] = &[
    super::api_key::KIND,
    super::basic_auth::KIND,
    super::jwt::KIND,
    super::client_cert::KIND,
    super::hmac_auth::KIND,
    super::ext_authz::KIND,
    super::upstream_jwt::KIND,
    super::introspection::KIND,
    super::oidc::KIND,
    super::acl::KIND,
    super::rate_limit::KIND,
    super::concurrency::KIND,
    super::security_headers::KIND,
    super::cors::KIND,
    super::ip_filter::KIND,
    super::request_limits::KIND,
    super::waf::KIND,
    super::compression::KIND,
    super::grpc_web::KIND,
    super::grpc_transcode::KIND,
    super::cache::KIND,
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
