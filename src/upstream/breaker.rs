//! Circuit breakers: passive health, learned from the outcome of every attempt.
//!
//! Each target has a [`Breaker`] (kept with its [`TargetState`](super::TargetState), so a
//! reload keeps it). Closed, it counts failures: connect errors, timeouts, broken exchanges and
//! 5xx answers; 4xx are the client's doing and count as successes. It opens on `failures`
//! consecutive failures, or when `failure_rate` of the attempts over `window` failed once
//! `min_requests` were seen. Open, selection skips the target (outlier ejection, beside the
//! active checks in [`Upstream::select`](super::Upstream::select)). After `open_for` it is
//! half-open: `half_open_requests` probes go through; if all succeed it closes, if one fails it
//! opens again for twice as long as the last time, up to `max_open_for`, so a flapping target
//! cannot come back faster than `open_for`. The doubling is forgotten once the target stayed
//! closed for `max_open_for`.
//!
//! Breakers never hold out more than `max_ejection_percent` of a pool (Envoy's rule, and like
//! Envoy at least one target): a pool whose every target fails keeps the rest in rotation.
//!
//! Every transition is a compare-and-swap on the state, so exactly one request performs it
//! and logs it; the counts are atomics and [`Window`] buckets.

use super::window::{self, Window};
use super::{Attempt, AttemptObserver, Outcome, Target, Upstream};
use crate::clock::now_ms;
use crate::config::CircuitBreakerConfig;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// The doubling stops at this many reopenings (then `max_open_for` caps it anyway).
const MAX_DOUBLINGS: u32 = 16;

/// A breaker's state, as `GET /upstreams` and `pylon_circuit_breaker_state` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The metric's value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        self as i64
    }
}

/// The settings of a pool's breakers, in the units the request path uses.
#[derive(Debug, Clone)]
pub struct Settings {
    failures: u32,
    failure_rate: Option<f64>,
    min_requests: u64,
    bucket_ms: u64,
    open_ms: u64,
    max_open_ms: u64,
    probes: u32,
    max_ejection_percent: u8,
}

impl Settings {
    pub fn new(c: &CircuitBreakerConfig) -> Settings {
        let open_ms = ms(c.open_for.0);
        Settings {
            failures: c.failures,
            failure_rate: c.failure_rate,
            min_requests: u64::from(c.min_requests.max(1)),
            bucket_ms: window::bucket_ms(ms(c.window.0)),
            open_ms,
            max_open_ms: c
                .max_open_for
                .map_or(open_ms.max(300_000), |m| ms(m.0))
                .max(open_ms),
            probes: c.half_open_requests.get(),
            max_ejection_percent: c.max_ejection_percent,
        }
    }

    /// How many of a pool of `pool` targets breakers may hold out at once.
    pub fn max_ejected(&self, pool: usize) -> usize {
        match self.max_ejection_percent {
            0 => 0,
            pct => (pool * usize::from(pct) / 100).max(1).min(pool),
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Checks of a `circuit_breaker` table, run while the file is read.
pub fn check(c: &CircuitBreakerConfig) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(rate) = c.failure_rate {
        if !(rate > 0.0 && rate <= 1.0) {
            errors.push(format!(
                "circuit_breaker.failure_rate must be above 0 and at most 1, not {rate}"
            ));
        }
    }
    if c.failures == 0 && c.failure_rate.is_none() {
        errors.push("circuit_breaker needs `failures` above 0 or a `failure_rate`".into());
    }
    if c.max_ejection_percent > 100 {
        errors.push("circuit_breaker.max_ejection_percent must be at most 100".into());
    }
    if c.max_open_for.is_some_and(|m| m.0 < c.open_for.0) {
        errors.push("circuit_breaker.max_open_for must be at least open_for".into());
    }
    errors
}

/// One target's breaker.
#[derive(Default)]
pub struct Breaker {
    state: AtomicU8,
    /// Consecutive failures while closed.
    streak: AtomicU32,
    /// Attempts and failures while closed, for `failure_rate`.
    window: Window,
    /// When an open breaker turns half-open (clock milliseconds).
    until: AtomicU64,
    /// Times it opened since it last stayed closed for `max_open_for`.
    trips: AtomicU32,
    /// When it last closed.
    closed_at: AtomicU64,
    /// Probes still to let through, and probes that succeeded, while half-open.
    permits: AtomicU32,
    passed: AtomicU32,
}

/// What a transition was, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened { for_ms: u64 },
    HalfOpened,
    Closed,
}

impl Breaker {
    pub fn state(&self, now: u64) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            // Open, but its time is up: the next request will probe.
            OPEN if now >= self.until.load(Ordering::Acquire) => State::HalfOpen,
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Held out of the pool (open or half-open), for the ejection cap.
    pub fn ejected(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// Whether a request may go to this target now. Half-open, each admitted request is one
    /// of the probes. The second value is the transition this call made, if any.
    pub fn admit(&self, s: &Settings, now: u64) -> (bool, Option<Change>) {
        match self.state.load(Ordering::Acquire) {
            CLOSED => (true, None),
            OPEN => {
                if now < self.until.load(Ordering::Acquire) {
                    return (false, None);
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return (self.take_permit(), None);
                }
                self.passed.store(0, Ordering::Relaxed);
                // This request is the first probe.
                self.permits
                    .store(s.probes.saturating_sub(1), Ordering::Release);
                (true, Some(Change::HalfOpened))
            }
            _ => (self.take_permit(), None),
        }
    }

    fn take_permit(&self) -> bool {
        self.permits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok()
    }

    /// Learn from one attempt. `failed`: `None` when the attempt says nothing of the target
    /// (the client left); a probe it held is handed back. `may_open` is asked before the
    /// breaker opens from closed (the pool's ejection cap).
    pub fn record(
        &self,
        s: &Settings,
        failed: Option<bool>,
        now: u64,
        may_open: impl FnOnce() -> bool,
    ) -> Option<Change> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => {
                let failed = failed?;
                if s.failure_rate.is_some() {
                    self.window.add(now, s.bucket_ms, [1, u32::from(failed)]);
                }
                if !failed {
                    if self.streak.load(Ordering::Relaxed) != 0 {
                        self.streak.store(0, Ordering::Relaxed);
                    }
                    return None;
                }
                let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
                let by_streak = s.failures > 0 && streak >= s.failures;
                let by_rate = s.failure_rate.is_some_and(|rate| {
                    let [total, failures] = self.window.sum(now, s.bucket_ms);
                    total >= s.min_requests && failures as f64 >= rate * total as f64
                });
                if !(by_streak || by_rate) || !may_open() {
                    return None;
                }
                // Stayed closed long enough: a fresh start for the doubling.
                if now.saturating_sub(self.closed_at.load(Ordering::Relaxed)) >= s.max_open_ms {
                    self.trips.store(0, Ordering::Relaxed);
                }
                self.open(s, CLOSED, now)
            }
            HALF_OPEN => match failed {
                None => {
                    self.permits.fetch_add(1, Ordering::AcqRel);
                    None
                }
                Some(true) => self.open(s, HALF_OPEN, now),
                Some(false) => {
                    let passed = self.passed.fetch_add(1, Ordering::AcqRel) + 1;
                    if passed < s.probes {
                        return None;
                    }
                    // Fresh counts before the state says closed, so that no failure recorded
                    // in between reads the old ones.
                    self.streak.store(0, Ordering::Relaxed);
                    self.window.clear();
                    self.closed_at.store(now, Ordering::Relaxed);
                    self.state
                        .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .ok()?;
                    Some(Change::Closed)
                }
            },
            // Requests sent before it opened: they change nothing.
            _ => None,
        }
    }

    /// Open from `from`. Everything an open breaker is read by (`until`, no permits, a fresh
    /// streak) is written before the state says open: a request that sees it open then sees
    /// when it may probe, and cannot half-open it early with a stale `until`.
    fn open(&self, s: &Settings, from: u8, now: u64) -> Option<Change> {
        let trips = self.trips.load(Ordering::Relaxed).min(MAX_DOUBLINGS);
        let for_ms = s.open_ms.saturating_mul(1 << trips).min(s.max_open_ms);
        self.until.store(now + for_ms, Ordering::Release);
        self.permits.store(0, Ordering::Release);
        self.streak.store(0, Ordering::Relaxed);
        self.state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.trips.fetch_add(1, Ordering::Relaxed);
        Some(Change::Opened { for_ms })
    }
}

/// Whether an attempt's outcome is a failure of the target; `None`: it says nothing.
fn failed(outcome: Outcome) -> Option<bool> {
    match outcome {
        Outcome::Connect { .. } | Outcome::Timeout | Outcome::Broken => Some(true),
        Outcome::Status(status) => Some(status >= 500),
        Outcome::Grpc(code) => Some(code.is_failure()),
        Outcome::Abandoned => None,
    }
}

/// A pool's breakers as an attempt observer: feeds each target's breaker, applies the
/// ejection cap, logs and counts transitions.
pub struct Breakers {
    pub settings: Settings,
    ejections: prometheus::IntCounter,
    /// Held while one breaker of the pool checks the cap and opens, so that two breakers
    /// tripping at once cannot both pass the check.
    tripping: AtomicBool,
}

impl Breakers {
    pub fn new(upstream: &str, config: &CircuitBreakerConfig) -> Breakers {
        Breakers {
            settings: Settings::new(config),
            ejections: crate::metrics::METRICS
                .upstream_ejections
                .with_label_values(&[upstream]),
            tripping: AtomicBool::new(false),
        }
    }
}

impl AttemptObserver for Breakers {
    fn observe(&self, upstream: &Upstream, target: &Target, attempt: &Attempt) {
        let breaker = &target.state.breaker;
        let mut holding = false;
        // A breaker that finds another one tripping stays closed this time; its next failure
        // asks again.
        let may_open = || {
            holding = self
                .tripping
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
            holding && upstream.ejected() < self.settings.max_ejected(upstream.size())
        };
        let change = breaker.record(&self.settings, failed(attempt.outcome), now_ms(), may_open);
        if holding {
            self.tripping.store(false, Ordering::Release);
        }
        match change {
            Some(Change::Opened { for_ms }) => {
                self.ejections.inc();
                log::warn!(
                    "upstream `{}`: circuit breaker for {} opened for {for_ms} ms after {:?}",
                    upstream.name,
                    target.label,
                    attempt.outcome
                );
            }
            Some(change) => {
                if change == Change::Closed {
                    // Back in rotation: slow start ramps it up again.
                    target.state.joined.set(now_ms());
                }
                log_change(upstream, target, change);
            }
            None => {}
        }
    }
}

/// Log a transition made outside `observe` (an open breaker turning half-open).
pub fn log_change(upstream: &Upstream, target: &Target, change: Change) {
    match change {
        Change::Opened { for_ms } => log::warn!(
            "upstream `{}`: circuit breaker for {} opened for {for_ms} ms",
            upstream.name,
            target.label
        ),
        Change::HalfOpened => log::info!(
            "upstream `{}`: circuit breaker for {} is half-open, probing",
            upstream.name,
            target.label
        ),
        Change::Closed => log::info!(
            "upstream `{}`: circuit breaker for {} closed",
            upstream.name,
            target.label
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, pause};

    fn settings(extra: &str) -> Settings {
        let c: CircuitBreakerConfig =
            toml::from_str(&format!("open_for = \"30s\"\n{extra}")).unwrap();
        assert!(check(&c).is_empty(), "{:?}", check(&c));
        Settings::new(&c)
    }

    fn fail(b: &Breaker, s: &Settings) -> Option<Change> {
        b.record(s, Some(true), now_ms(), || true)
    }

    fn pass(b: &Breaker, s: &Settings) -> Option<Change> {
        b.record(s, Some(false), now_ms(), || true)
    }

    #[tokio::test]
    async fn consecutive_failures_open_then_probes_close() {
        pause();
        let s = settings("failures = 3\nhalf_open_requests = 2");
        let b = Breaker::default();
        assert_eq!(fail(&b, &s), None);
        assert_eq!(pass(&b, &s), None, "a success restarts the streak");
        assert_eq!(fail(&b, &s), None);
        assert_eq!(fail(&b, &s), None);
        assert_eq!(fail(&b, &s), Some(Change::Opened { for_ms: 30_000 }));
        assert_eq!(b.state(now_ms()), State::Open);
        assert_eq!(b.admit(&s, now_ms()), (false, None));
        advance(Duration::from_secs(30)).await;
        assert_eq!(b.state(now_ms()), State::HalfOpen);
        assert_eq!(b.admit(&s, now_ms()), (true, Some(Change::HalfOpened)));
        assert_eq!(b.admit(&s, now_ms()), (true, None), "the second probe");
        assert_eq!(b.admit(&s, now_ms()), (false, None), "only two probes");
        assert_eq!(pass(&b, &s), None);
        assert_eq!(pass(&b, &s), Some(Change::Closed));
        assert_eq!(b.admit(&s, now_ms()), (true, None));
    }

    #[tokio::test]
    async fn a_failing_probe_reopens_for_longer_up_to_the_cap() {
        pause();
        let s = settings("failures = 1\nmax_open_for = \"100s\"");
        let b = Breaker::default();
        assert_eq!(fail(&b, &s), Some(Change::Opened { for_ms: 30_000 }));
        let mut open_for = 30_000;
        for expected in [60_000, 100_000, 100_000] {
            // Not a moment before its time, however often it is asked.
            advance(Duration::from_millis(open_for - 1)).await;
            assert_eq!(b.admit(&s, now_ms()), (false, None));
            advance(Duration::from_millis(1)).await;
            assert_eq!(b.admit(&s, now_ms()), (true, Some(Change::HalfOpened)));
            assert_eq!(fail(&b, &s), Some(Change::Opened { for_ms: expected }));
            open_for = expected;
        }
        advance(Duration::from_millis(open_for)).await;
        // Closed and stable for `max_open_for`: the next opening is short again.
        assert!(b.admit(&s, now_ms()).0);
        assert_eq!(pass(&b, &s), Some(Change::Closed));
        advance(Duration::from_secs(100)).await;
        assert_eq!(fail(&b, &s), Some(Change::Opened { for_ms: 30_000 }));
    }

    #[tokio::test]
    async fn failure_rate_over_the_window_once_enough_requests() {
        pause();
        let s = settings("failures = 0\nfailure_rate = 0.5\nmin_requests = 10\nwindow = \"10s\"");
        let b = Breaker::default();
        // Half of 8 failed, but 8 are too few to judge.
        for _ in 0..4 {
            assert_eq!(pass(&b, &s), None);
            assert_eq!(fail(&b, &s), None);
        }
        // Old outcomes slide out of the window.
        advance(Duration::from_secs(11)).await;
        for _ in 0..5 {
            assert_eq!(pass(&b, &s), None);
        }
        for _ in 0..4 {
            assert_eq!(fail(&b, &s), None);
        }
        assert!(matches!(fail(&b, &s), Some(Change::Opened { .. })));
    }

    #[tokio::test]
    async fn the_cap_and_abandoned_probes() {
        pause();
        let s = settings("failures = 1");
        let b = Breaker::default();
        // The pool's cap says no: it stays closed.
        assert_eq!(b.record(&s, Some(true), now_ms(), || false), None);
        assert_eq!(b.state(now_ms()), State::Closed);
        assert_eq!(s.max_ejected(4), 2);
        assert_eq!(s.max_ejected(3), 1);
        assert_eq!(s.max_ejected(1), 1);
        // An abandoned probe hands its permit back; 4xx are successes.
        assert!(matches!(fail(&b, &s), Some(Change::Opened { .. })));
        advance(Duration::from_secs(30)).await;
        assert!(b.admit(&s, now_ms()).0);
        assert!(!b.admit(&s, now_ms()).0);
        assert_eq!(
            b.record(&s, failed(Outcome::Abandoned), now_ms(), || true),
            None
        );
        assert!(b.admit(&s, now_ms()).0);
        assert_eq!(failed(Outcome::Status(404)), Some(false));
        assert_eq!(
            b.record(&s, failed(Outcome::Status(404)), now_ms(), || true),
            Some(Change::Closed)
        );
    }
}
