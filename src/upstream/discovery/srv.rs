//! `kind = "srv"`: targets, ports and weights from SRV records (Consul's DNS interface,
//! Kubernetes headless services). Only the records of the best (lowest) priority are used, as
//! RFC 2782 says; the others are backups for when none of those resolve.

use super::dns::{bounded, name_of, ttl, Resolver};
use super::{Answer, Found, Source};
use crate::config::DiscoveryConfig;
use async_trait::async_trait;
use hickory_resolver::proto::rr::RData;
use std::net::SocketAddr;

pub struct Srv {
    resolver: Resolver,
    name: String,
}

impl Srv {
    pub fn new(config: &DiscoveryConfig) -> Result<Srv, String> {
        Ok(Srv {
            resolver: Resolver::new(config)?,
            name: name_of(config)?,
        })
    }
}

#[async_trait]
impl Source for Srv {
    async fn find(&self) -> Result<Answer, String> {
        let resolver = self.resolver.get().await?;
        let what = format!("looking up SRV {}", self.name);
        let lookup = bounded(&what, resolver.srv_lookup(self.name.as_str())).await?;
        let mut ttl = ttl(lookup.valid_until());
        let mut records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                // A target of "." means the service is not available there.
                RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
                _ => None,
            })
            .collect();
        records.sort_by_key(|srv| srv.priority);
        let mut found = Vec::new();
        for priority in records
            .iter()
            .map(|s| s.priority)
            .collect::<std::collections::BTreeSet<_>>()
        {
            for srv in records.iter().filter(|s| s.priority == priority) {
                let target = srv.target.to_string();
                let what = format!("resolving {target}");
                let ips = match bounded(&what, resolver.lookup_ip(srv.target.clone())).await {
                    Ok(ips) => ips,
                    Err(e) => {
                        log::debug!("SRV {}: {e}", self.name);
                        continue;
                    }
                };
                ttl = ttl.min(super::dns::ttl(ips.valid_until()));
                let host = format!("{}:{}", target.trim_end_matches('.'), srv.port);
                found.extend(ips.iter().map(|ip| Found {
                    addr: SocketAddr::new(ip, srv.port),
                    // Weight 0 means "rarely" in RFC 2782; the balancer needs at least 1, and
                    // expands each target by its weight, so it is capped as configured ones are.
                    weight: usize::from(srv.weight).clamp(1, crate::config::MAX_WEIGHT),
                    host: host.clone(),
                }));
            }
            if !found.is_empty() {
                break;
            }
        }
        Ok(Answer {
            found,
            ttl: Some(ttl),
        })
    }
}
