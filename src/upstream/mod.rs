//! Upstream pools: targets, selection and the peer a request is sent to.
//!
//! Each `[upstreams.NAME]` becomes one [`Upstream`] wrapping a `pingora-load-balancing`
//! [`LoadBalancer`] with the configured selection. Per-target data that the request path needs
//! (the prepared [`HttpPeer`], its [`TargetState`]) lives in the [`Backend`]'s extensions, built
//! once at load, so selecting a target allocates nothing of ours.
//!
//! A pool is rebuilt by every reload; what must survive one (health, breaker, drain, requests
//! in flight) is each target's [`TargetState`], carried by upstream name and address (static
//! targets) or by the pool's discovery [`Members`](discovery::Members).
//!
//! Selection ([`Upstream::select`]) is where every gate meets: the active checks' verdict,
//! drains, the circuit breakers ([`breaker`]) and slow start ([`slow_start`]).

pub mod attempt;
pub mod breaker;
mod budget;
pub mod call;
pub mod discovery;
mod hash_on;
mod health;
mod least_requests;
pub mod reach;
mod rotation;
mod slow_start;
mod supervisor;
mod target;
pub mod window;

pub use attempt::{Attempt, AttemptObserver, Attempts, Outcome, Replay, Unavailable};
pub use hash_on::HashOn;
pub use health::Health;
pub use least_requests::LeastRequests;
pub use supervisor::{LivePools, PoolSupervisor};
pub use target::{InflightGuard, Target, TargetState};

use crate::clock::now_ms;
use crate::config::{
    BackoffConfig, Balancer, HealthCheckConfig, RetryBudgetConfig, UpstreamConfig,
};
use crate::state::Keeper;
use breaker::Breakers;
use budget::RetryBudget;
use discovery::{Discovered, Found, Members};
use futures::FutureExt;
use pingora_load_balancing::discovery::{ServiceDiscovery, Static};
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use reach::Reach;
use rotation::Rotation;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// How far selection looks for a usable target before giving up.
const MAX_SELECT_STEPS: usize = 256;

/// The selection a pool uses; one variant per `balancer`.
enum Pool {
    RoundRobin(LoadBalancer<RoundRobin>, Rotation),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    LeastRequests(LoadBalancer<LeastRequests>),
}

fn select<S>(
    lb: &LoadBalancer<S>,
    key: &[u8],
    accept: impl Fn(&Backend, bool) -> bool,
) -> Option<Arc<Target>>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let chosen = lb.select_with(key, MAX_SELECT_STEPS, accept)?;
    Target::of(&chosen).cloned()
}

/// What a pool keeps across reloads: whether it has checks and their first round is done, its
/// requests in flight (`max_inflight`), its retry budget.
#[derive(Default)]
struct PoolState {
    checked: AtomicBool,
    has_checks: AtomicBool,
    inflight: AtomicUsize,
    budget: RetryBudget,
}

/// One request counted against a pool's `max_inflight`; dropping it ends the count.
pub struct PoolSlot(Arc<PoolState>);

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `pylon_upstream_unavailable_total` of one pool, resolved at load.
struct Refusals {
    no_target: prometheus::IntCounter,
    max_inflight: prometheus::IntCounter,
}

/// A named pool of targets with its selection, health checks and connection settings.
pub struct Upstream {
    pub name: Arc<str>,
    pool: Pool,
    pub hash_on: Option<HashOn>,
    /// Extra attempts after the first (connect failures; 502/503/504 for idempotent methods).
    pub retries: usize,
    /// The read timeout of an upgrade request's attempts (`tunnel_idle_timeout`).
    tunnel_idle: std::time::Duration,
    pub health_check: Option<HealthCheckConfig>,
    /// The check of static targets; discovered ones get one per name they are known by.
    check: Option<Arc<dyn HealthCheck + Send + Sync>>,
    checks_by_name: std::sync::Mutex<HashMap<String, Arc<dyn HealthCheck + Send + Sync>>>,
    reach: Reach,
    /// What learns from each attempt to a target ([`attempt`]).
    pub observers: Box<[Arc<dyn AttemptObserver>]>,
    breakers: Option<Arc<Breakers>>,
    max_inflight: Option<usize>,
    pub retry_budget: RetryBudgetConfig,
    pub retry_backoff: BackoffConfig,
    slow_start_ms: Option<u64>,
    discovered: Option<Arc<Discovered>>,
    refusals: Refusals,
    state: Arc<PoolState>,
}

impl Upstream {
    /// An upgrade request's attempt: Pingora reads a tunnel's target with the attempt's read
    /// timeout, so a quiet tunnel lasts `tunnel_idle_timeout`, not `read_timeout`.
    pub fn for_tunnel(&self, peer: &mut pingora::upstreams::peer::HttpPeer) {
        peer.options.read_timeout = Some(self.tunnel_idle);
    }

    /// Build a pool from a validated definition, keeping the state of targets that stay.
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        keeper: &mut Keeper<'_>,
    ) -> Result<Upstream, String> {
        // A target a reload adds to a checked pool waits for its first passing check.
        let gated = config.health_check.is_some();
        let reach = Reach::new(config).map_err(|e| format!("upstream `{name}`: {e}"))?;
        let reloading = keeper.reloading();
        let mut backends = BTreeSet::new();
        for t in &config.targets {
            let t = t.get_ref();
            let addr = crate::config::resolve(t.addr())
                .ok_or_else(|| format!("upstream `{name}`: cannot resolve {:?}", t.addr()))?;
            let state = keeper.keep("target", &format!("{name}/{addr}"), (), || {
                Ok::<_, String>(if reloading {
                    TargetState::joining(gated)
                } else {
                    TargetState::new(Health::healthy())
                })
            })?;
            let found = Found {
                addr,
                weight: t.weight(),
                host: t.addr().to_string(),
            };
            let backend = Target::backend(&found, t.addr(), "static", state, &reach)
                .map_err(|e| format!("upstream `{name}`: {e}"))?;
            backends.insert(backend);
        }
        let discovered = match &config.discovery {
            Some(d) => {
                let members = keeper.keep_default::<_, Members>("discovery", name, ());
                let kind = discovery::kind_label(d.get_ref().kind);
                let peers = reach.clone();
                let make: discovery::MakeBackend = Box::new(move |found, state| {
                    let label = found.addr.to_string();
                    Target::backend(found, &label, kind, state, &peers).ok()
                });
                let discovered =
                    Discovered::new(d.get_ref(), backends.clone(), members, make, gated)
                        .map_err(|e| format!("upstream `{name}`: {e}"))?;
                Some(Arc::new(discovered))
            }
            None => None,
        };
        let view = || -> Backends {
            let source: Box<dyn ServiceDiscovery + Send + Sync> = match &discovered {
                Some(d) => Box::new(discovery::Shared(Arc::clone(d))),
                None => Static::new(backends.clone()),
            };
            Backends::new(source)
        };
        let pool = match config.balancer {
            Balancer::RoundRobin => {
                Pool::RoundRobin(LoadBalancer::from_backends(view()), Rotation::default())
            }
            Balancer::Random => Pool::Random(LoadBalancer::from_backends(view())),
            Balancer::ConsistentHash => Pool::Consistent(LoadBalancer::from_backends(view())),
            Balancer::LeastRequests => Pool::LeastRequests(LoadBalancer::from_backends(view())),
        };
        let state = keeper.keep_default::<_, PoolState>("upstream", name, ());
        // A pool that gains checks waits for their first round; one without any has none to
        // wait for. Its in-flight count and retry budget carry on either way.
        let had_checks = state
            .has_checks
            .swap(config.health_check.is_some(), Ordering::AcqRel);
        match (config.health_check.is_some(), had_checks) {
            (false, _) => state.checked.store(true, Ordering::Release),
            (true, false) => state.checked.store(false, Ordering::Release),
            (true, true) => {}
        }
        let breakers = config
            .circuit_breaker
            .as_ref()
            .map(|cb| Arc::new(Breakers::new(name, cb.get_ref())));
        let mut observers: Vec<Arc<dyn AttemptObserver>> = vec![Arc::new(attempt::DurationMetric(
            crate::metrics::METRICS
                .upstream_duration
                .with_label_values(&[name]),
        ))];
        if let Some(b) = &breakers {
            observers.push(Arc::clone(b) as Arc<dyn AttemptObserver>);
        }
        let refused = |reason: &str| {
            crate::metrics::METRICS
                .upstream_unavailable
                .with_label_values(&[name, reason])
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
            tunnel_idle: config.tunnel_idle_timeout.0,
            health_check: config.health_check.clone(),
            check: config
                .health_check
                .as_ref()
                .map(|hc| health::build_check(hc, &reach, &health::pool_check_name(name, config))),
            checks_by_name: std::sync::Mutex::default(),
            reach,
            observers: observers.into(),
            breakers,
            max_inflight: config.max_inflight.map(|m| m.get()),
            retry_budget: config.retry_budget.clone(),
            retry_backoff: config.retry_backoff.clone(),
            slow_start_ms: config.slow_start.map(|d| d.0.as_millis() as u64),
            discovered,
            refusals: Refusals {
                no_target: refused("no_target"),
                max_inflight: refused("max_inflight"),
            },
            state,
        };
        // Static targets, and discovery's first answer (the last good lookup, kept across
        // reloads), come at once: this fills the selector before the first request.
        upstream
            .update()
            .now_or_never()
            .ok_or("discovery blocked")?
            .map_err(|e| format!("upstream `{name}`: {e}"))?;
        if let Some(d) = &upstream.discovered {
            d.mark_published();
        }
        Ok(upstream)
    }

    async fn update(&self) -> pingora::Result<()> {
        match &self.pool {
            Pool::RoundRobin(lb, _) => lb.update().await,
            Pool::Random(lb) => lb.update().await,
            Pool::Consistent(lb) => lb.update().await,
            Pool::LeastRequests(lb) => lb.update().await,
        }
    }

    /// Look the pool's targets up again (discovery); the wait until the next lookup.
    pub async fn refresh(&self) -> Result<std::time::Duration, String> {
        let Some(d) = &self.discovered else {
            return Err("no discovery".into());
        };
        self.update().await.map_err(|e| e.to_string())?;
        d.mark_published();
        Ok(d.next_wait())
    }

    /// The check of a discovered target, for the name it was found under.
    fn check_for(
        &self,
        hc: &HealthCheckConfig,
        target: &Target,
    ) -> Arc<dyn HealthCheck + Send + Sync> {
        let host = target.host_header.to_str().unwrap_or_default();
        let name = sni_for(host, &self.reach.config);
        let mut checks = self
            .checks_by_name
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            checks
                .entry(name)
                .or_insert_with_key(|name| health::build_check(hc, &self.reach, name)),
        )
    }

    /// The pool's discovery, if it has one.
    pub fn discovered(&self) -> Option<&Arc<Discovered>> {
        self.discovered.as_ref()
    }

    fn backends(&self) -> &Backends {
        match &self.pool {
            Pool::RoundRobin(lb, _) => lb.backends(),
            Pool::Random(lb) => lb.backends(),
            Pool::Consistent(lb) => lb.backends(),
            Pool::LeastRequests(lb) => lb.backends(),
        }
    }

    /// Run one round of active health checks over every target, all at once.
    pub async fn run_health_check(&self) {
        let (Some(check), Some(hc)) = (&self.check, &self.health_check) else {
            return;
        };
        let set = self.backends().get_backend();
        let rounds = set.iter().filter_map(|b| Some((b, Target::of(b)?))).map(
            |(backend, target)| async move {
                let check = match target.source {
                    "static" => Arc::clone(check),
                    _ => self.check_for(hc, target),
                };
                let result = check.check(backend).await;
                let flipped = target.state.health.observe(
                    result.is_ok(),
                    hc.healthy.get(),
                    hc.unhealthy.get(),
                );
                match (flipped, result) {
                    (Some(true), _) => {
                        target.state.joined.set(now_ms());
                        log::info!("upstream `{}`: {} is healthy", self.name, target.label)
                    }
                    (Some(false), Err(e)) => log::warn!(
                        "upstream `{}`: {} is unhealthy: {e}",
                        self.name,
                        target.label
                    ),
                    _ => {}
                }
            },
        );
        futures::future::join_all(rounds).await;
        self.state.checked.store(true, Ordering::Release);
    }

    /// Whether `target` may get traffic: not drained, and healthy when the pool is checked (a
    /// pool whose checks a reload removed ignores what they said).
    pub fn in_rotation(&self, target: &Target) -> bool {
        (self.check.is_none() || target.state.health.ready()) && !target.state.drained()
    }

    /// Whether some target waits for its first check (a reload added it).
    pub fn awaits_checks(&self) -> bool {
        self.check.is_some() && self.targets().iter().any(|t| t.state.health.unknown())
    }

    /// Whether the first round of health checks has finished, the first lookup of a
    /// discovered pool succeeded, and the targets it found have had their first check.
    pub fn checked(&self) -> bool {
        self.state.checked.load(Ordering::Acquire)
            && self
                .discovered
                .as_ref()
                .is_none_or(|d| d.published() && !self.awaits_checks())
    }

    /// The number of targets.
    pub fn size(&self) -> usize {
        self.backends().get_backend().len()
    }

    /// Whether the pool could take a request now: under its `max_inflight`, with a target in
    /// rotation whose breaker is not open (one whose time is up takes the next request as a
    /// probe). Walks the pool (a split asks it of the backend it picked).
    pub fn available(&self) -> bool {
        let full = self
            .max_inflight
            .is_some_and(|max| self.state.inflight.load(Ordering::Relaxed) >= max);
        if full {
            return false;
        }
        let now = now_ms();
        self.backends()
            .get_backend()
            .iter()
            .filter_map(Target::of)
            .any(|t| self.in_rotation(t) && t.state.breaker.state(now) != breaker::State::Open)
    }

    /// The number of targets their breakers hold out.
    pub fn ejected(&self) -> usize {
        self.backends()
            .get_backend()
            .iter()
            .filter_map(Target::of)
            .filter(|t| t.state.breaker.ejected())
            .count()
    }

    /// A target's breaker state; closed when the pool has no breakers.
    pub fn breaker_state(&self, target: &Target) -> breaker::State {
        match &self.breakers {
            Some(_) => target.state.breaker.state(now_ms()),
            None => breaker::State::Closed,
        }
    }

    /// A target's weight now: its configured weight, scaled down while it ramps up.
    pub fn effective_weight(&self, target: &Target) -> f64 {
        let share = self
            .slow_start_ms
            .map_or(1.0, |ramp| target.state.joined.share(now_ms(), ramp));
        target.weight as f64 * share
    }

    /// Every target of the pool. Not for the request path: it walks the pool.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.backends()
            .get_backend()
            .iter()
            .filter_map(|b| Target::of(b).cloned())
            .collect()
    }

    /// Take a target out of rotation (`false`) or put it back; false when no target has that
    /// label (the address as written in the config, or the resolved `IP:PORT`). A drain is
    /// kept across reloads while the target stays.
    pub fn set_enabled(&self, target: &str, enabled: bool) -> bool {
        let found = self
            .targets()
            .into_iter()
            .find(|t| &*t.label == target || t.addr.to_string() == target);
        match found {
            Some(t) => {
                let was_drained = t.state.drained.swap(!enabled, Ordering::Relaxed);
                if enabled && was_drained {
                    t.state.joined.set(now_ms());
                }
                true
            }
            None => false,
        }
    }

    /// Count a request against `max_inflight`; `None` when the pool is full.
    pub fn enter(&self) -> Result<Option<PoolSlot>, Unavailable> {
        let Some(max) = self.max_inflight else {
            return Ok(None);
        };
        if self.state.inflight.fetch_add(1, Ordering::Relaxed) >= max {
            self.state.inflight.fetch_sub(1, Ordering::Relaxed);
            self.refusals.max_inflight.inc();
            return Err(Unavailable::MaxInflight);
        }
        Ok(Some(PoolSlot(Arc::clone(&self.state))))
    }

    /// Count a request's first attempt in the retry budget.
    pub fn deposit(&self) {
        if self.retries > 0 {
            self.state.budget.deposit(now_ms());
        }
    }

    /// Take a retry from the budget; false (and counted) when it is spent.
    pub fn withdraw(&self) -> bool {
        let granted = self.state.budget.withdraw(&self.retry_budget, now_ms());
        if !granted {
            crate::metrics::METRICS
                .retry_budget_exhausted
                .with_label_values(&[&self.name])
                .inc();
        }
        granted
    }

    /// Count a request no target could take.
    pub fn refused(&self) {
        self.refusals.no_target.inc();
    }

    /// Pick a target in rotation for `key`, skipping those `skip` rejects (targets tried).
    /// Each candidate passes the gates in order: health and drain, `skip`, slow start, then
    /// its breaker (last, since a half-open breaker counts what it admits as a probe). Slow
    /// start only thins a target's share: when it turns every candidate away, a second pass
    /// goes without it.
    pub fn select(&self, key: &[u8], skip: impl Fn(&Target) -> bool) -> Option<Arc<Target>> {
        let now = if self.breakers.is_some() || self.slow_start_ms.is_some() {
            now_ms()
        } else {
            0
        };
        let pick = |ramp: Option<u64>| {
            let accept = |t: &Target| {
                self.in_rotation(t)
                    && !skip(t)
                    && ramp.is_none_or(|ms| t.state.joined.admits(now, ms))
                    && self.breaker_admits(t, now)
            };
            let backend = |b: &Backend, _: bool| Target::of(b).is_some_and(|t| accept(t));
            match &self.pool {
                Pool::RoundRobin(lb, rotation) => {
                    rotation.select(lb.backends().get_backend(), accept)
                }
                Pool::Random(lb) => select(lb, key, backend),
                Pool::Consistent(lb) => select(lb, key, backend),
                Pool::LeastRequests(lb) => select(lb, key, backend),
            }
        };
        pick(self.slow_start_ms).or_else(|| {
            self.slow_start_ms?;
            pick(None)
        })
    }

    fn breaker_admits(&self, target: &Target, now: u64) -> bool {
        let Some(breakers) = &self.breakers else {
            return true;
        };
        let (admitted, change) = target.state.breaker.admit(&breakers.settings, now);
        if let Some(change) = change {
            breaker::log_change(self, target, change);
        }
        admitted
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Carried, Keeper};

    fn build(config: &str, previous: Option<&Carried>) -> (Upstream, Carried) {
        let config: UpstreamConfig = toml::from_str(config).unwrap();
        let mut keeper = Keeper::new(previous);
        let upstream = Upstream::build("u", &config, &mut keeper).unwrap();
        (upstream, keeper.finish())
    }

    const CHECKED: &str = "targets = [\"127.0.0.1:1\"]\nhealth_check = { kind = \"tcp\" }";

    #[test]
    fn targets_keep_their_state_and_new_ones_wait_for_a_check() {
        let (first, carried) = build(CHECKED, None);
        let t = first.select(b"", |_| false).expect("healthy at start");
        t.state.drained.store(true, Ordering::Relaxed);
        let _in_flight = t.acquire();
        // Another key changes: the same state, drain and count included.
        let edited = format!("{CHECKED}\nread_timeout = \"5s\"");
        let (second, carried) = build(&edited, Some(&carried));
        let kept = &second.targets()[0];
        assert!(Arc::ptr_eq(&kept.state, &t.state));
        assert!(second.select(b"", |_| false).is_none(), "still drained");
        kept.state.drained.store(false, Ordering::Relaxed);
        assert!(second.select(b"", |_| false).is_some());
        // A target added by a reload waits for its first passing check.
        let grown =
            "targets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nhealth_check = { kind = \"tcp\" }";
        let (third, carried) = build(grown, Some(&carried));
        let new = third
            .targets()
            .into_iter()
            .find(|t| t.addr.port() == 2)
            .unwrap();
        assert!(new.state.health.unknown() && !third.in_rotation(&new));
        assert!(third.awaits_checks());
        // Without checks any more, what they said no longer keeps a target out.
        let unchecked = "targets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]";
        let (fourth, _) = build(unchecked, Some(&carried));
        assert!(fourth.targets().iter().all(|t| fourth.in_rotation(t)));
    }
}
