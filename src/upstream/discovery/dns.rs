//! `kind = "dns"`: the A and AAAA records of a name, every one a target on `port`.

use super::{Answer, Found, Source};
use crate::config::DiscoveryConfig;
use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// A lookup that takes longer than this has failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// `resolver = "IP"` or `"IP:PORT"`.
pub fn resolver_addr(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// A resolver for the configured server, or the system's (`/etc/resolv.conf`), built on first
/// use inside the runtime that runs the lookups.
pub struct Resolver {
    server: Option<SocketAddr>,
    built: OnceCell<TokioResolver>,
}

impl Resolver {
    pub fn new(config: &DiscoveryConfig) -> Result<Resolver, String> {
        let server = match &config.resolver {
            Some(r) => Some(
                resolver_addr(r.get_ref())
                    .ok_or_else(|| format!("invalid resolver {:?}", r.get_ref()))?,
            ),
            None => None,
        };
        Ok(Resolver {
            server,
            built: OnceCell::new(),
        })
    }

    pub async fn get(&self) -> Result<&TokioResolver, String> {
        self.built
            .get_or_try_init(|| async {
                let builder = match self.server {
                    Some(addr) => {
                        let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                        for connection in &mut server.connections {
                            connection.port = addr.port();
                        }
                        let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
                        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                    }
                    None => TokioResolver::builder_tokio()
                        .map_err(|e| format!("cannot read the system resolver: {e}"))?,
                };
                builder.build().map_err(|e| e.to_string())
            })
            .await
    }
}

/// Bound a lookup by [`LOOKUP_TIMEOUT`].
pub async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    lookup: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {LOOKUP_TIMEOUT:?}")),
    }
}

/// Until `valid_until`, as a TTL.
pub fn ttl(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// The `name` a `dns` or `srv` discovery looks up (checked present at parse).
pub fn name_of(config: &DiscoveryConfig) -> Result<String, String> {
    config
        .name
        .as_ref()
        .map(|n| n.get_ref().clone())
        .ok_or_else(|| "no `name`".to_string())
}

pub struct Dns {
    resolver: Resolver,
    name: String,
    port: u16,
}

impl Dns {
    pub fn new(config: &DiscoveryConfig) -> Result<Dns, String> {
        Ok(Dns {
            resolver: Resolver::new(config)?,
            name: name_of(config)?,
            port: config.port.ok_or("no `port`")?,
        })
    }
}

#[async_trait]
impl Source for Dns {
    async fn find(&self) -> Result<Answer, String> {
        let resolver = self.resolver.get().await?;
        let what = format!("resolving {}", self.name);
        let lookup = bounded(&what, resolver.lookup_ip(self.name.as_str())).await?;
        let host = format!("{}:{}", self.name.trim_end_matches('.'), self.port);
        Ok(Answer {
            found: lookup
                .iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, self.port),
                    weight: 1,
                    host: host.clone(),
                })
                .collect(),
            ttl: Some(ttl(lookup.valid_until())),
        })
    }
}
