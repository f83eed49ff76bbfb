//! `[server]` (listeners, timeouts, limits, the binary upgrade), `[[server.tls]]` and `[admin]`.

use super::*;

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
    /// A certificate in use that expires sooner than this is warned of in the log, at load
    /// and daily.
    #[serde(default = "default_cert_expiry_warning")]
    pub cert_expiry_warning: ConfDuration,
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
            cert_expiry_warning: default_cert_expiry_warning(),
        }
    }
}

/// An IP network, or a single address as a /32 or /128 (`trusted_proxies`).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
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
fn default_cert_expiry_warning() -> ConfDuration {
    ConfDuration(Duration::from_secs(14 * 24 * 3600))
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
