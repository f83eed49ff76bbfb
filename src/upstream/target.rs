//! One target of a pool: its address, prepared peer and `Host`, and the state that outlives a
//! reload (health, breaker, drain, requests in flight, when it joined).

use super::breaker;
use super::discovery::Found;
use super::reach::Reach;
use super::slow_start;
use super::Health;
use crate::clock::now_ms;
use pingora::upstreams::peer::HttpPeer;
use pingora_load_balancing::Backend;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// What outlives a reload of one target: its health, breaker, drain, requests in flight, and
/// when it last joined the pool (slow start).
pub struct TargetState {
    pub health: Health,
    pub breaker: breaker::Breaker,
    /// Taken out of rotation by the admin API.
    pub drained: AtomicBool,
    inflight: AtomicUsize,
    pub joined: slow_start::Joined,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState::new(Health::healthy())
    }
}

impl TargetState {
    pub fn new(health: Health) -> TargetState {
        TargetState {
            health,
            breaker: breaker::Breaker::default(),
            drained: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            joined: slow_start::Joined::default(),
        }
    }

    /// A target joining a running pool: it ramps up (slow start) and, in a checked pool
    /// (`gated`), waits for its first passing check.
    pub fn joining(gated: bool) -> TargetState {
        let health = if gated {
            Health::starting_unknown()
        } else {
            Health::healthy()
        };
        TargetState {
            joined: slow_start::Joined::at(now_ms()),
            ..TargetState::new(health)
        }
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }
}

/// One target of a pool, shared by every selector that holds its [`Backend`].
pub struct Target {
    pub addr: SocketAddr,
    /// The label in logs, metrics and the admin API: a static target as written in the config
    /// (`api.internal:8443`), a discovered one by address.
    pub label: Arc<str>,
    /// The name it is known by, with its port, as the upstream `Host` header, built once.
    pub host_header: http::HeaderValue,
    /// The peer requests are sent to: address, timeouts and TLS settings, prepared at load.
    pub peer: HttpPeer,
    pub state: Arc<TargetState>,
    /// `static`, or the discovery kind that found it.
    pub source: &'static str,
    pub weight: usize,
}

impl Target {
    /// The balancer's entry for one target, carrying the target.
    pub(crate) fn backend(
        found: &Found,
        label: &str,
        source: &'static str,
        state: Arc<TargetState>,
        reach: &Reach,
    ) -> Result<Backend, String> {
        let target = Arc::new(Target {
            addr: found.addr,
            label: label.into(),
            host_header: http::HeaderValue::from_str(&found.host)
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            peer: reach.peer(found.addr, &found.host),
            state,
            source,
            weight: found.weight,
        });
        let mut backend = Backend::new_with_weight(&found.addr.to_string(), found.weight)
            .map_err(|e| e.to_string())?;
        backend.ext.insert(target);
        Ok(backend)
    }

    /// The target a backend of ours carries.
    pub fn of(backend: &Backend) -> Option<&Arc<Target>> {
        backend.ext.get::<Arc<Target>>()
    }

    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::Relaxed)
    }

    /// Count one request in flight until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> InflightGuard {
        self.state.inflight.fetch_add(1, Ordering::Relaxed);
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
        self.0.state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
