//! The runtime snapshot: everything a request needs, compiled from one configuration.
//!
//! A snapshot is immutable. Reloads build a new one and swap it in atomically; a request holds
//! the `Arc` of the route it matched, so it finishes on the configuration it started with.

use crate::config::{validate::parse_cidr, Config, ConfigError};
use crate::router::Router;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub router: Router,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Policy state that outlives a reload: JWKS sets, rate-limit counters, Redis connections.
    pub policy_state: crate::policy::State,
    /// Peers whose `x-forwarded-*` headers are believed.
    pub trusted_proxies: Box<[ipnet::IpNet]>,
    /// The configuration this was built from, for `GET /config`.
    pub config: Config,
}

impl Snapshot {
    /// Compile a validated configuration. Pools whose definition is unchanged since `previous`
    /// are kept, with their health state and connections.
    pub fn build(config: &Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        let mut upstreams = HashMap::new();
        for (name, located) in &config.upstreams {
            let kept = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|u| u.config == located.value);
            let upstream = match kept {
                Some(u) => Arc::clone(u),
                None => Arc::new(
                    Upstream::build(name, &located.value)
                        .map_err(|e| ConfigError::at(located.span.clone(), e))?,
                ),
            };
            upstreams.insert(name.clone(), upstream);
        }
        let none = crate::policy::State::default();
        let compiled = crate::policy::compile(config, previous.map_or(&none, |p| &p.policy_state))?;
        let policies = compiled.policies;
        let global: Vec<_> = config
            .server
            .global_policies
            .iter()
            .filter_map(|n| policies.get(n.get_ref()).cloned())
            .collect();
        let router = Router::compile(&config.routes, &upstreams, &policies, &global)?;
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| parse_cidr(c.get_ref()))
            .collect();
        Ok(Snapshot {
            router,
            upstreams,
            policy_state: compiled.state,
            trusted_proxies,
            config: config.clone(),
        })
    }
}
