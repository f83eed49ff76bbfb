//! The runtime snapshot: everything a request needs, compiled from one configuration.
//!
//! A snapshot is immutable. Reloads build a new one and swap it in atomically; a request holds
//! the `Arc` of the snapshot it started on, so it finishes on that configuration. What must
//! outlive a reload is carried from one snapshot to the next in [`Carried`].

use crate::config::{parse_cidr, Config, ConfigError};
use crate::consumer::Consumers;
use crate::filter::Chain;
use crate::load::Checked;
use crate::policy;
use crate::policy::cache::{self, LiveCaches};
use crate::policy::jwt::jwks::{Jwks, LiveKeySets};
use crate::router::{RouteDefaults, Router};
use crate::split::controller::LiveSplits;
use crate::split::Split;
use crate::state::{Carried, Keeper};
use crate::tls::{accept::LiveListeners, ListenerTls};
use crate::upstream::{LivePools, Upstream};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub router: Router,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The global policies: their response phases apply to requests that matched no route.
    pub global: Chain,
    /// State that outlives this configuration, for the next one to keep.
    pub carried: Carried,
    /// Peers whose `x-forwarded-*` headers are believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The certificates and client checks of each TLS listener, by its address.
    pub tls: HashMap<String, Arc<ListenerTls>>,
    /// The configuration this was built from, for `GET /config`.
    pub checked: Checked,
}

impl Snapshot {
    /// Compile a validated configuration, keeping the state of `previous` (the running
    /// snapshot) wherever what identifies it is unchanged.
    pub fn build(
        checked: &Checked,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let config = &checked.config;
        let mut keeper = Keeper::new(previous.map(|p| &p.carried));
        let mut upstreams = HashMap::new();
        let mut errors = Vec::new();
        for (name, located) in &config.upstreams {
            match Upstream::build(name, &located.value, &mut keeper) {
                Ok(u) => {
                    upstreams.insert(name.clone(), Arc::new(u));
                }
                Err(e) => errors.push(ConfigError::at(located.span.clone(), e)),
            }
        }
        let tls = compile_tls(config, previous, &mut errors);
        let consumers = Consumers::compile(config);
        let policies = match policy::compile(
            &checked.policies,
            config,
            &consumers,
            &upstreams,
            &mut keeper,
        ) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(e);
                return Err(errors);
            }
        };
        let global: Vec<_> = config
            .server
            .global_policies
            .iter()
            .filter_map(|n| policies.get(n.get_ref()))
            .collect();
        let is_limits = |name: &str| {
            checked
                .policies
                .get(name)
                .is_some_and(|p| p.kind == policy::request_limits::KIND.name)
        };
        let default_limits = policy::request_limits::defaults();
        let global_limits = config
            .server
            .global_policies
            .iter()
            .any(|n| is_limits(n.get_ref()));
        let defaults = RouteDefaults {
            limits: (!global_limits).then_some(&default_limits),
            is_limits: &is_limits,
        };
        let router = Router::compile(
            &config.routes,
            &upstreams,
            &policies,
            &global,
            consumers.len(),
            &defaults,
            &mut keeper,
        )
        .map_err(|e| vec![e])?;
        if !errors.is_empty() {
            return Err(errors);
        }
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| parse_cidr(c.get_ref()))
            .collect();
        Ok(Snapshot {
            router,
            upstreams,
            global: policy::chain(&global),
            carried: keeper.finish(),
            trusted_proxies,
            tls,
            checked: checked.clone(),
        })
    }
}

/// The pools' background loops find the pools of the running snapshot.
impl LivePools for ArcSwap<Snapshot> {
    fn pool(&self, name: &str) -> Option<Arc<Upstream>> {
        self.load().upstreams.get(name).cloned()
    }

    fn pools(&self) -> Vec<(String, Arc<Upstream>)> {
        let snapshot = self.load();
        let pools = snapshot.upstreams.iter();
        pools.map(|(n, u)| (n.clone(), Arc::clone(u))).collect()
    }
}

/// The JWKS refresher keeps the key sets the running snapshot carries fresh.
impl LiveKeySets for ArcSwap<Snapshot> {
    fn key_sets(&self) -> Vec<Arc<Jwks>> {
        self.load().carried.all::<Jwks>().collect()
    }
}

/// Purges reach the caches the running snapshot carries, on its purge channel.
impl LiveCaches for ArcSwap<Snapshot> {
    fn caches(&self) -> Vec<Arc<cache::Storage>> {
        self.load().carried.all::<cache::Storage>().collect()
    }

    fn purge_redis(&self) -> Vec<String> {
        self.load().checked.config.cache.purge_urls()
    }
}

/// The canary controller judges the splits of the running snapshot's routes.
impl LiveSplits for ArcSwap<Snapshot> {
    fn splits(&self) -> Vec<Arc<Split>> {
        let snapshot = self.load();
        let routes = snapshot.router.routes();
        routes.filter_map(|r| r.split().cloned()).collect()
    }
}

/// A TLS handshake takes its listener's certificates from the running snapshot.
impl LiveListeners for ArcSwap<Snapshot> {
    fn listener(&self, listen: &str) -> Option<Arc<ListenerTls>> {
        self.load().tls.get(listen).cloned()
    }

    fn listeners(&self) -> Vec<(String, Arc<ListenerTls>)> {
        let snapshot = self.load();
        let all = snapshot.tls.iter();
        all.map(|(listen, tls)| (listen.clone(), Arc::clone(tls)))
            .collect()
    }
}

/// Every TLS listener's certificates, read from their files now. A listener the new
/// configuration drops keeps its certificates until the restart that closes it.
fn compile_tls(
    config: &Config,
    previous: Option<&Snapshot>,
    errors: &mut Vec<ConfigError>,
) -> HashMap<String, Arc<ListenerTls>> {
    let mut tls = HashMap::new();
    for listener in &config.server.tls {
        match ListenerTls::compile(listener, config.server.cert_expiry_warning.0) {
            Ok(compiled) => {
                tls.insert(listener.listen.get_ref().clone(), Arc::new(compiled));
            }
            Err(e) => errors.extend(e),
        }
    }
    for (addr, kept) in previous.into_iter().flat_map(|p| &p.tls) {
        tls.entry(addr.clone()).or_insert_with(|| Arc::clone(kept));
    }
    tls
}
