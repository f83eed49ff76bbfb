//! Service discovery: targets found by DNS, SRV records or a watched file, fed to the pool's
//! `pingora-load-balancing` selection through its [`ServiceDiscovery`] seam.
//!
//! A [`Source`] looks the targets up once; adding a kind is one file and one line in
//! [`source`]. [`Discovered`] is the pool's `ServiceDiscovery`: each call asks the source,
//! adds the static targets, and gives every target the [`TargetState`] it had (kept in the
//! pool's [`Members`], which outlive reloads), so a target that stays (or is missing from
//! answers for less than a minute) keeps its health, breaker, drain and in-flight count. A target that is new starts unknown when the pool has
//! health checks, and gets traffic once a check passed.
//!
//! One loop per pool name ([`refresh_loop`]) runs the lookups on their own schedule: every
//! `interval`, sooner when the answer's TTL runs out first, never more often than `min_ttl`.
//! A failed lookup (the server is down, the name is gone, the file does not parse) keeps the
//! last good targets; it is logged and counted in `pylon_discovery_errors_total`, where
//! Pingora's own background updater would drop it silently.

mod dns;
mod file;
mod srv;

use super::{LivePools, TargetState, Upstream};
use crate::config::{ConfigError, DiscoveryConfig, DiscoveryKind};
use async_trait::async_trait;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use toml::Spanned;

/// One target a source found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: usize,
    /// The name it was found under, with its port: the upstream `Host` and TLS name.
    pub host: String,
}

/// What one lookup found, and for how long the answer holds (DNS TTLs).
pub struct Answer {
    pub found: Vec<Found>,
    pub ttl: Option<Duration>,
}

/// One kind of discovery.
#[async_trait]
pub trait Source: Send + Sync {
    /// Look the targets up once. An empty answer is an error: a pool is not emptied by a
    /// name that briefly resolves to nothing.
    async fn find(&self) -> Result<Answer, String>;
}

/// The source a `discovery` table describes.
pub fn source(config: &DiscoveryConfig) -> Result<Box<dyn Source>, String> {
    Ok(match config.kind {
        DiscoveryKind::Dns => Box::new(dns::Dns::new(config)?),
        DiscoveryKind::Srv => Box::new(srv::Srv::new(config)?),
        DiscoveryKind::File => Box::new(file::File::new(config)?),
    })
}

/// The `source` label of a discovered target.
pub fn kind_label(kind: DiscoveryKind) -> &'static str {
    match kind {
        DiscoveryKind::Dns => "dns",
        DiscoveryKind::Srv => "srv",
        DiscoveryKind::File => "file",
    }
}

/// Checks of a `discovery` table, run while the file is read.
pub fn check(d: &Spanned<DiscoveryConfig>) -> Vec<ConfigError> {
    let c = d.get_ref();
    let at = |message: String| ConfigError::at(d.span(), message);
    let mut errors = Vec::new();
    let kind = kind_label(c.kind);
    if c.interval.0 < MIN_INTERVAL {
        errors.push(at(format!(
            "discovery interval must be at least {MIN_INTERVAL:?}"
        )));
    }
    if c.min_ttl.is_some_and(|m| m.0 > c.interval.0) {
        errors.push(at(
            "discovery min_ttl must not be above its interval".to_string()
        ));
    }
    match c.kind {
        DiscoveryKind::Dns | DiscoveryKind::Srv => {
            if c.name.is_none() {
                errors.push(at(format!("discovery kind = \"{kind}\" needs a `name`")));
            }
            if c.path.is_some() {
                errors.push(at(format!("discovery kind = \"{kind}\" takes no `path`")));
            }
            match (c.kind, c.port) {
                (DiscoveryKind::Dns, None | Some(0)) => errors.push(at(
                    "discovery kind = \"dns\" needs the targets' `port`".to_string(),
                )),
                (DiscoveryKind::Srv, Some(_)) => errors.push(at(
                    "discovery kind = \"srv\" takes no `port`: the records carry it".to_string(),
                )),
                _ => {}
            }
            if let Some(r) = &c.resolver {
                if dns::resolver_addr(r.get_ref()).is_none() {
                    errors.push(ConfigError::at(
                        r.span(),
                        format!("invalid resolver {:?}: expected IP or IP:PORT", r.get_ref()),
                    ));
                }
            }
        }
        DiscoveryKind::File => {
            if c.path.is_none() {
                errors.push(at("discovery kind = \"file\" needs a `path`".to_string()));
            }
            if c.name.is_some() || c.port.is_some() || c.resolver.is_some() {
                errors.push(at(
                    "discovery kind = \"file\" takes only `path` and `interval`".to_string(),
                ));
            }
        }
    }
    errors
}

/// The shortest `interval`: lookups more often than this would load the DNS server for
/// nothing.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long the state of a target missing from answers is kept.
const FORGET_AFTER_MS: u64 = 60_000;

/// `min_ttl` when not given (capped at the interval).
const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);

/// What a pool's discovery keeps across reloads: the last good answer, for a rebuilt pool to
/// start from, and the state of each discovered target. A reload that changes what is looked
/// up (another name, resolver, file) still starts from the last answer: the pool keeps
/// serving it until the new lookup succeeds, rather than running empty in between.
#[derive(Default)]
pub struct Members {
    last: Mutex<Option<Vec<Found>>>,
    /// Each target's state, and when an answer last listed it (clock milliseconds).
    states: Mutex<HashMap<SocketAddr, (Arc<TargetState>, u64)>>,
}

impl Members {
    /// Whether a lookup has succeeded yet.
    pub fn found(&self) -> bool {
        lock(&self.last).is_some()
    }

    /// The state of each target found at `now`, keeping those that stay. A target missing
    /// from answers is forgotten after [`FORGET_AFTER_MS`], so one dropped from a single answer
    /// (a DNS server rotating subsets, an SRV target that failed to resolve once) comes back
    /// with its breaker, drain and health.
    fn states_for(&self, found: &[Found], gated: bool, now: u64) -> Vec<Arc<TargetState>> {
        let mut states = lock(&self.states);
        let picked = found
            .iter()
            .map(|f| {
                let entry = states
                    .entry(f.addr)
                    .or_insert_with(|| (Arc::new(TargetState::joining(gated)), now));
                entry.1 = now;
                Arc::clone(&entry.0)
            })
            .collect();
        states.retain(|_, (_, seen)| now.saturating_sub(*seen) < FORGET_AFTER_MS);
        picked
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds the balancer's entry for a discovered target.
pub type MakeBackend = Box<dyn Fn(&Found, Arc<TargetState>) -> Option<Backend> + Send + Sync>;

/// A pool's discovery: its source, its static targets, its members.
pub struct Discovered {
    pub kind: &'static str,
    source: Box<dyn Source>,
    fixed: BTreeSet<Backend>,
    pub members: Arc<Members>,
    make: MakeBackend,
    /// New targets wait for a passing health check.
    gated: bool,
    /// The first call (while the pool is built) answers from the last good lookup.
    seeded: AtomicBool,
    interval: Duration,
    min_ttl: Duration,
    /// Until the next lookup, in milliseconds, from the last answer.
    next_ms: AtomicU64,
    /// The selector holds targets found by a lookup (this pool's, or a kept one).
    published: AtomicBool,
}

impl Discovered {
    pub fn new(
        config: &DiscoveryConfig,
        fixed: BTreeSet<Backend>,
        members: Arc<Members>,
        make: MakeBackend,
        gated: bool,
    ) -> Result<Discovered, String> {
        Ok(Discovered {
            kind: kind_label(config.kind),
            source: source(config)?,
            fixed,
            members,
            make,
            gated,
            seeded: AtomicBool::new(false),
            interval: config.interval.0,
            min_ttl: config
                .min_ttl
                .map_or(DEFAULT_MIN_TTL.min(config.interval.0), |m| m.0),
            next_ms: AtomicU64::new(config.interval.0.as_millis() as u64),
            published: AtomicBool::new(false),
        })
    }

    /// Whether requests see targets found by a lookup yet, for readiness.
    pub fn published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }

    /// The selector now holds what the last lookup found (or the kept answer it was seeded
    /// with, when there was one).
    pub fn mark_published(&self) {
        if self.members.found() {
            self.published.store(true, Ordering::Release);
        }
    }

    /// How long to wait before the next lookup.
    pub fn next_wait(&self) -> Duration {
        Duration::from_millis(self.next_ms.load(Ordering::Relaxed))
    }

    /// The error wait: the interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    async fn lookup(&self) -> Result<Vec<Found>, String> {
        if !self.seeded.swap(true, Ordering::AcqRel) {
            return Ok(lock(&self.members.last).clone().unwrap_or_default());
        }
        let answer = self.source.find().await?;
        if answer.found.is_empty() {
            return Err("the lookup found no targets".into());
        }
        // Never `clamp`, which panics when the bounds cross; they are checked at parse.
        let wait = answer
            .ttl
            .map_or(self.interval, |ttl| {
                ttl.max(self.min_ttl).min(self.interval)
            })
            .max(MIN_INTERVAL);
        self.next_ms
            .store(wait.as_millis() as u64, Ordering::Relaxed);
        *lock(&self.members.last) = Some(answer.found.clone());
        Ok(answer.found)
    }
}

/// The `ServiceDiscovery` the pool's `Backends` owns, sharing the pool's [`Discovered`].
pub struct Shared(pub Arc<Discovered>);

#[async_trait]
impl ServiceDiscovery for Shared {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let d = &self.0;
        let found = d.lookup().await.map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::Custom("discovery failed"), e)
        })?;
        let states = d
            .members
            .states_for(&found, d.gated, crate::clock::now_ms());
        let mut set = d.fixed.clone();
        for (f, state) in found.iter().zip(states) {
            // A target listed statically keeps its static entry.
            if !set.iter().any(|b| b.addr.as_inet() == Some(&f.addr)) {
                set.extend((d.make)(f, state));
            }
        }
        Ok((set, HashMap::new()))
    }
}

/// How often the loop looks for a reload that replaced its pool.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// The pool with discovery the live configuration holds under `name`.
fn current(live: &dyn LivePools, name: &str) -> Option<Arc<Upstream>> {
    live.pool(name).filter(|u| u.discovered().is_some())
}

/// Refresh the targets of the pool named `name` until it is gone.
pub async fn refresh_loop(live: Arc<dyn LivePools>, name: String) {
    let errors = crate::metrics::METRICS
        .discovery_errors
        .with_label_values(&[&name]);
    while let Some(pool) = current(&*live, &name) {
        let wait = match pool.refresh().await {
            Ok(wait) => wait,
            Err(e) => {
                errors.inc();
                log::warn!("upstream `{name}`: discovery failed, keeping the last targets: {e}");
                pool.discovered().map_or(SCAN_INTERVAL, |d| d.interval())
            }
        };
        // Compared by address only, never dereferenced.
        let refreshed = Arc::as_ptr(&pool) as usize;
        drop(pool);
        let mut waited = Duration::ZERO;
        while waited < wait {
            let step = SCAN_INTERVAL.min(wait - waited);
            tokio::time::sleep(step).await;
            waited += step;
            // A reload rebuilt the pool (perhaps with another name to look up): look now.
            let now = current(&*live, &name);
            if now.is_none_or(|p| Arc::as_ptr(&p) as usize != refreshed) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(port: u16) -> Found {
        Found {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            host: format!("svc:{port}"),
        }
    }

    /// Answers a lookup with the next scripted result.
    struct Scripted(Mutex<Vec<Result<Answer, String>>>);

    #[async_trait]
    impl Source for Scripted {
        async fn find(&self) -> Result<Answer, String> {
            lock(&self.0).remove(0)
        }
    }

    fn answer(ports: &[u16], ttl_ms: Option<u64>) -> Result<Answer, String> {
        Ok(Answer {
            found: ports.iter().map(|p| found(*p)).collect(),
            ttl: ttl_ms.map(Duration::from_millis),
        })
    }

    #[tokio::test]
    async fn lookups_follow_the_ttl_within_bounds_and_failures_keep_the_last_answer() {
        let members = Arc::new(Members::default());
        *lock(&members.last) = Some(vec![found(1)]);
        let d = Discovered {
            kind: "dns",
            source: Box::new(Scripted(Mutex::new(vec![
                answer(&[2], Some(100)),
                answer(&[2, 3], Some(3_000)),
                answer(&[3], Some(60_000)),
                Err("no answer".into()),
                answer(&[], None),
                answer(&[4], None),
            ]))),
            fixed: BTreeSet::new(),
            members: Arc::clone(&members),
            make: Box::new(|_, _| None),
            gated: false,
            seeded: AtomicBool::new(false),
            interval: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            next_ms: AtomicU64::new(5_000),
            published: AtomicBool::new(false),
        };
        // The first call answers from the kept list, without a lookup.
        assert_eq!(d.lookup().await.unwrap(), [found(1)]);
        // A TTL below `min_ttl` waits `min_ttl`; between the bounds, the TTL; above, `interval`.
        for (ports, wait) in [(&[2][..], 1_000), (&[2, 3], 3_000), (&[3], 5_000)] {
            let got = d.lookup().await.unwrap();
            assert_eq!(got.iter().map(|f| f.addr.port()).collect::<Vec<_>>(), ports);
            assert_eq!(d.next_wait(), Duration::from_millis(wait));
        }
        // A failed or empty lookup is an error and keeps the last answer.
        assert!(d.lookup().await.is_err());
        assert!(d.lookup().await.is_err());
        assert_eq!(*lock(&members.last), Some(vec![found(3)]));
        // No TTL (a file): the interval.
        d.lookup().await.unwrap();
        assert_eq!(d.next_wait(), Duration::from_secs(5));
    }

    #[test]
    fn targets_that_stay_keep_their_state() {
        let members = Members::default();
        let first = members.states_for(&[found(1), found(2)], true, 1_000);
        assert!(
            first.iter().all(|s| s.health.unknown()),
            "new targets wait for a check"
        );
        first[0].drained.store(true, Ordering::Relaxed);
        let second = members.states_for(&[found(1), found(3)], true, 2_000);
        assert!(Arc::ptr_eq(&first[0], &second[0]) && second[0].drained());
        // Missing from one answer, back in the next: the same state.
        let third = members.states_for(&[found(2)], false, 3_000);
        assert!(Arc::ptr_eq(&first[1], &third[0]));
        // Gone for longer than FORGET_AFTER_MS, then back: a new target.
        members.states_for(&[found(3)], false, 3_000 + FORGET_AFTER_MS);
        let fourth = members.states_for(&[found(1)], false, 4_000 + FORGET_AFTER_MS);
        assert!(!Arc::ptr_eq(&first[0], &fourth[0]) && fourth[0].health.ready());
    }
}
