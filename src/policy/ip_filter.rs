//! `ip_filter`: allow and deny lists of networks, IPv4 and IPv6, on the client address (after
//! `server.trusted_proxies`).
//!
//! Both lists go into one longest-prefix table at load (`ip_network_table`, a tree bitmap), so a
//! request costs one lookup whether the lists hold ten entries or ten thousand. The most
//! specific entry that contains the address decides (`deny 10.0.0.0/8` with
//! `allow 10.1.0.0/16` lets 10.1.2.3 in); a network in both lists is denied. An address no entry
//! contains is let in when there is no `allow` list, and refused when there is one. Refusals
//! are `403 forbidden`, counted in `pylon_blocked_requests_total{route,policy,reason}`.

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply, Stage};
use crate::metrics::METRICS;
use async_trait::async_trait;
use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use toml::Spanned;

pub const KIND: Kind = Kind {
    name: "ip_filter",
    parse,
};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or addresses let in; absent or empty: any.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Networks or addresses refused.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

struct IpFilterSpec {
    config: IpFilterConfig,
    filter: Arc<IpFilter>,
}

impl Spec for IpFilterSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Allow,
    Deny,
}

pub struct IpFilter {
    name: Arc<str>,
    table: IpNetworkTable<Rule>,
    /// Whether an address no entry contains is refused.
    default_deny: bool,
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
fn network(s: &str) -> Result<IpNetwork, String> {
    let s = s.trim();
    let parsed = match s.contains('/') {
        true => IpNetwork::from_str(s).map_err(|e| e.to_string()),
        false => IpAddr::from_str(s)
            .map(|ip| IpNetwork::from(ip.to_canonical()))
            .map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| {
        format!("{s:?} is not a network such as \"10.0.0.0/8\" or \"2001:db8::/32\": {e}")
    })
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: IpFilterConfig = src.settings()?;
    let mut errors = Vec::new();
    let mut table = IpNetworkTable::new();
    for (list, rule) in [(&config.allow, Rule::Allow), (&config.deny, Rule::Deny)] {
        for entry in list {
            match network(entry.get_ref()) {
                Ok(net) => {
                    // A network in both lists is denied, whichever came first.
                    if table.exact_match(net) != Some(&Rule::Deny) {
                        table.insert(net, rule);
                    }
                }
                Err(e) => errors.push(ConfigError::at(
                    entry.span(),
                    format!("policy `{}`: {e}", src.place.name),
                )),
            }
        }
    }
    if config.allow.is_empty() && config.deny.is_empty() {
        errors.push(
            src.place
                .error("`allow` and `deny` are both empty: the filter does nothing"),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let filter = Arc::new(IpFilter {
        name: src.place.name.as_str().into(),
        table,
        default_deny: !config.allow.is_empty(),
    });
    Ok(Arc::new(IpFilterSpec { config, filter }))
}

impl IpFilter {
    /// Why `ip` is refused, or `None` when it is let in.
    fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        match self.table.longest_match(ip.to_canonical()) {
            Some((_, Rule::Deny)) => Some("ip_denied"),
            Some((_, Rule::Allow)) => None,
            None if self.default_deny => Some("ip_not_allowed"),
            None => None,
        }
    }
}

#[async_trait]
impl Filter for IpFilter {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    /// Before authentication: a refused address costs no credential check.
    fn stage(&self) -> Stage {
        Stage::BeforeAuth
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let ip = cx.client_ip(&req.headers);
        let Some(reason) = self.refuses(ip) else {
            return Ok(());
        };
        METRICS
            .blocked_requests
            .with_label_values(&[cx.route_name(), &self.name, reason])
            .inc();
        cx.notes.push("ip_blocked");
        Err(Reply::error(error::FORBIDDEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        let mut table = IpNetworkTable::new();
        for a in allow {
            table.insert(network(a).unwrap(), Rule::Allow);
        }
        for d in deny {
            table.insert(network(d).unwrap(), Rule::Deny);
        }
        IpFilter {
            name: "f".into(),
            table,
            default_deny: !allow.is_empty(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_entry_decides() {
        let f = filter(
            &["10.0.0.0/8", "2001:db8::/32"],
            &["10.1.2.3", "10.2.0.0/16", "2001:db8:bad::/48"],
        );
        assert_eq!(f.refuses(ip("10.9.9.9")), None);
        assert_eq!(f.refuses(ip("10.1.2.3")), Some("ip_denied"));
        assert_eq!(f.refuses(ip("10.2.5.5")), Some("ip_denied"));
        assert_eq!(f.refuses(ip("192.168.1.1")), Some("ip_not_allowed"));
        assert_eq!(f.refuses(ip("2001:db8::1")), None);
        assert_eq!(f.refuses(ip("2001:db8:bad::1")), Some("ip_denied"));
        assert_eq!(
            f.refuses(ip("::ffff:10.1.2.3")),
            Some("ip_denied"),
            "IPv4-mapped"
        );
        let carve = filter(&["10.1.0.0/16"], &["10.0.0.0/8"]);
        assert_eq!(carve.refuses(ip("10.1.2.3")), None);
        assert_eq!(carve.refuses(ip("10.2.2.3")), Some("ip_denied"));
    }

    #[test]
    fn deny_only_lets_the_rest_in() {
        let f = filter(&[], &["203.0.113.0/24"]);
        assert_eq!(f.refuses(ip("203.0.113.9")), Some("ip_denied"));
        assert_eq!(f.refuses(ip("198.51.100.1")), None);
    }

    #[test]
    fn bad_networks_are_refused() {
        assert!(network("10.0.0.1/8").is_err(), "host bits set");
        assert!(network("10.0.0.0/33").is_err());
        assert!(network("nope").is_err());
        assert!(network("::1").is_ok());
    }

    #[test]
    fn ten_thousand_entries_are_one_lookup() {
        let nets: Vec<String> = (0..10_000u32)
            .map(|i| format!("{}.{}.{}.0/24", 10 + (i >> 16), (i >> 8) & 255, i & 255))
            .collect();
        let refs: Vec<&str> = nets.iter().map(String::as_str).collect();
        let f = filter(&[], &refs);
        assert_eq!(f.refuses(ip("10.0.5.7")), Some("ip_denied"));
        assert_eq!(f.refuses(ip("10.39.16.1")), None);
    }
}
