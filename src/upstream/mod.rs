//! Upstream pools: targets, selection and the peer a request is sent to.
//!
//! Each `[upstreams.NAME]` becomes one [`Upstream`] wrapping a `pingora-load-balancing`
//! [`LoadBalancer`] with the configured selection. Per-target data that the request path needs
//! (the prepared [`HttpPeer`], the in-flight counter) lives in the [`Backend`]'s extensions, built
//! once at load, so selecting a target allocates nothing of ours.

mod health;
mod least_requests;

pub use health::HealthSupervisor;
pub use least_requests::LeastRequests;

use crate::config::{Balancer, HealthCheckConfig, UpstreamConfig};
use futures::FutureExt;
use pingora::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// How far selection looks for a usable target before giving up.
const MAX_SELECT_STEPS: usize = 256;

/// One target of a pool, shared by every selector that holds its [`Backend`].
pub struct Target {
    pub addr: SocketAddr,
    /// The target as written in the config (`api.internal:8443`): the upstream `Host` header,
    /// and the label in logs and metrics.
    pub label: Arc<str>,
    /// `label` as the upstream `Host` header value, built once.
    pub host_header: http::HeaderValue,
    /// The peer requests are sent to: address, timeouts and TLS settings, prepared at load.
    pub peer: HttpPeer,
    inflight: AtomicUsize,
}

impl Target {
    pub fn new(addr: SocketAddr, written: &str, peer: HttpPeer) -> Arc<Self> {
        Arc::new(Target {
            addr,
            label: written.into(),
            host_header: http::HeaderValue::from_str(written)
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            peer,
            inflight: AtomicUsize::new(0),
        })
    }

    /// The target a backend of ours carries.
    pub fn of(backend: &Backend) -> Option<&Arc<Target>> {
        backend.ext.get::<Arc<Target>>()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Count one request in flight until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }
}

/// One request in flight to a target; dropping it ends the count.
pub struct InflightGuard(Arc<Target>);

impl InflightGuard {
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a `consistent_hash` pool hashes to pick a target.
#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashOn {
    pub fn parse(s: &str) -> Option<HashOn> {
        match s {
            "client_ip" => Some(HashOn::ClientIp),
            "path" => Some(HashOn::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .ok()
                        .map(HashOn::Header)
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    (!c.is_empty()).then(|| HashOn::Cookie(c.to_string()))
                } else {
                    None
                }
            }
        }
    }
}

/// The selection a pool uses; one variant per `balancer`.
enum Pool {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    LeastRequests(LoadBalancer<LeastRequests>),
}

fn select<S>(
    lb: &LoadBalancer<S>,
    key: &[u8],
    accept: impl Fn(&Backend, bool) -> bool,
) -> Option<Backend>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    lb.select_with(key, MAX_SELECT_STEPS, accept)
}

/// A named pool of targets with its selection, health checks and connection settings.
pub struct Upstream {
    pub name: Arc<str>,
    pool: Pool,
    pub hash_on: Option<HashOn>,
    /// Extra attempts after the first (connect failures; 502/503/504 for idempotent methods).
    pub retries: usize,
    pub health_check: Option<HealthCheckConfig>,
    /// The definition this pool was built from; an unchanged definition keeps the pool on reload.
    pub config: UpstreamConfig,
    pub metrics: crate::metrics::UpstreamMetrics,
    /// Set once the first round of health checks has finished (at once without checks);
    /// readiness waits for it.
    checked: AtomicBool,
}

impl Upstream {
    /// Build a pool from a validated definition.
    pub fn build(name: &str, config: &UpstreamConfig) -> Result<Upstream, String> {
        let mut backends = BTreeSet::new();
        for t in &config.targets {
            let t = t.get_ref();
            let addr = crate::config::validate::resolve(t.addr())
                .ok_or_else(|| format!("upstream `{name}`: cannot resolve {:?}", t.addr()))?;
            let target = Target::new(addr, t.addr(), peer_for(addr, t.addr(), config));
            let mut backend = Backend::new_with_weight(&addr.to_string(), t.weight())
                .map_err(|e| format!("upstream `{name}`: {e}"))?;
            backend.ext.insert(Arc::clone(&target));
            backends.insert(backend);
        }
        let view = || {
            let mut b = Backends::new(Static::new(backends.clone()));
            if let Some(hc) = &config.health_check {
                b.set_health_check(health::build_check(name, hc, config));
            }
            b
        };
        let pool = match config.balancer {
            Balancer::RoundRobin => Pool::RoundRobin(LoadBalancer::from_backends(view())),
            Balancer::Random => Pool::Random(LoadBalancer::from_backends(view())),
            Balancer::ConsistentHash => Pool::Consistent(LoadBalancer::from_backends(view())),
            Balancer::LeastRequests => Pool::LeastRequests(LoadBalancer::from_backends(view())),
        };
        let upstream = Upstream {
            name: name.into(),
            pool,
            hash_on: match config.balancer {
                Balancer::ConsistentHash => Some(
                    config
                        .hash_on
                        .as_ref()
                        .and_then(|h| HashOn::parse(h.get_ref()))
                        .unwrap_or(HashOn::ClientIp),
                ),
                _ => None,
            },
            retries: config.retries,
            health_check: config.health_check.clone(),
            config: config.clone(),
            metrics: crate::metrics::UpstreamMetrics::new(name),
            checked: AtomicBool::new(config.health_check.is_none()),
        };
        // Static discovery answers at once; this fills the selector before the first request.
        upstream
            .update()
            .now_or_never()
            .ok_or("static discovery blocked")?
            .map_err(|e| format!("upstream `{name}`: {e}"))?;
        Ok(upstream)
    }

    async fn update(&self) -> pingora::Result<()> {
        match &self.pool {
            Pool::RoundRobin(lb) => lb.update().await,
            Pool::Random(lb) => lb.update().await,
            Pool::Consistent(lb) => lb.update().await,
            Pool::LeastRequests(lb) => lb.update().await,
        }
    }

    fn backends(&self) -> &Backends {
        match &self.pool {
            Pool::RoundRobin(lb) => lb.backends(),
            Pool::Random(lb) => lb.backends(),
            Pool::Consistent(lb) => lb.backends(),
            Pool::LeastRequests(lb) => lb.backends(),
        }
    }

    /// Run one round of active health checks over every target.
    pub async fn run_health_check(&self) {
        self.backends().run_health_check(true).await;
        self.checked.store(true, Ordering::Release);
    }

    /// Whether the first round of health checks has finished.
    pub fn checked(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }

    /// Every target with whether it is in rotation (healthy and enabled). Not for the request
    /// path: it walks the pool.
    pub fn target_states(&self) -> Vec<(Arc<Target>, bool)> {
        let backends = self.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| Target::of(b).map(|t| (Arc::clone(t), backends.ready(b))))
            .collect()
    }

    /// Take a target out of rotation (`false`) or put it back; false when no target has that
    /// label (the address as written in the config, or the resolved `IP:PORT`).
    pub fn set_enabled(&self, target: &str, enabled: bool) -> bool {
        let backends = self.backends();
        let set = backends.get_backend();
        let found = set.iter().find(|b| {
            Target::of(b).is_some_and(|t| &*t.label == target || t.addr.to_string() == target)
        });
        match found {
            Some(b) => {
                backends.set_enable(b, enabled);
                true
            }
            None => false,
        }
    }

    /// Pick a healthy target for `key`, skipping those `skip` rejects (targets already tried).
    pub fn select(&self, key: &[u8], skip: impl Fn(&Target) -> bool) -> Option<Arc<Target>> {
        let accept =
            |b: &Backend, healthy: bool| healthy && Target::of(b).is_some_and(|t| !skip(t));
        let chosen = match &self.pool {
            Pool::RoundRobin(lb) => select(lb, key, accept),
            Pool::Random(lb) => select(lb, key, accept),
            Pool::Consistent(lb) => select(lb, key, accept),
            Pool::LeastRequests(lb) => select(lb, key, accept),
        }?;
        Target::of(&chosen).cloned()
    }
}

/// The host part of a target as written: `api.internal` of `api.internal:8443`.
pub fn host_of(written: &str) -> &str {
    let host = written.rsplit_once(':').map_or(written, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The TLS server name for a target: `sni`, or the target's host as written.
pub fn sni_for(written: &str, config: &UpstreamConfig) -> String {
    config
        .sni
        .clone()
        .unwrap_or_else(|| host_of(written).to_string())
}

/// The peer for one target, with the pool's timeouts and TLS settings.
fn peer_for(addr: SocketAddr, written: &str, config: &UpstreamConfig) -> HttpPeer {
    let sni = if config.tls {
        sni_for(written, config)
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, config.tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(config.connect_timeout.0);
    o.read_timeout = Some(config.read_timeout.0);
    o.write_timeout = Some(config.write_timeout.0);
    o.idle_timeout = Some(config.idle_timeout.0);
    o.verify_cert = config.verify;
    o.verify_hostname = config.verify;
    peer
}
