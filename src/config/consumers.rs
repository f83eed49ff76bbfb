//! `[consumers.NAME]`: the known clients of the API and their credentials.

use super::*;

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
    /// The secret an `hmac_auth` policy checks this consumer's signatures with (its
    /// `username` is the consumer's name).
    pub hmac_secret: Option<Spanned<Secret>>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub user: String,
    pub password_hash: Secret,
}
