//! Attempts to reach a target: which target each one went to, how it ended, and whether the
//! request may be tried again.
//!
//! Pingora reports an attempt's end in several hooks: a failed connect, a response header, an
//! error while proxying. Each hands it to [`Attempts`], which reports the [`Outcome`] once to
//! the pool's [`AttemptObserver`]s (the seam for passive health: outlier detection, circuit
//! breakers) and answers the retry question, in one place ([`Attempts::may_retry`]): within
//! `retries`, within the pool's retry budget, never a request the target may have acted on
//! unless it is idempotent, and after a backoff with jitter ([`Attempts::backoff`]).

use super::{InflightGuard, PoolSlot, Target, Upstream};
use crate::grpc::Code;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection: refused, reset, TLS failure, or (`timeout`) no answer to the connect.
    /// The target saw nothing of the request.
    Connect { timeout: bool },
    /// Connected, then no answer in time.
    Timeout,
    /// The target answered with this status.
    Status(u16),
    /// The target ended a gRPC call with this `grpc-status`, under an HTTP 200 (in a
    /// trailers-only answer's headers, or in the trailers).
    Grpc(Code),
    /// Connected, then the exchange broke (reset, a malformed response).
    Broken,
    /// The request ended before the target answered, for a reason not the target's (the
    /// client went away): not a failure of the target.
    Abandoned,
}

impl Outcome {
    /// What an answer's header says: its status, or, for a gRPC call answered 200, the
    /// `grpc-status` of a trailers-only answer. `None`: a gRPC call whose status is still to
    /// come, in the trailers.
    pub fn of_answer(status: u16, grpc: bool, grpc_status: Option<Code>) -> Option<Outcome> {
        match (status, grpc, grpc_status) {
            (200, _, Some(code)) => Some(Outcome::Grpc(code)),
            (200, true, None) => None,
            _ => Some(Outcome::Status(status)),
        }
    }
}

/// What makes a request safe to send again once a target answered it.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// The method says the request can be repeated (GET, PUT, ...).
    pub idempotent: bool,
    /// The body, if any, is still whole in the retry buffer.
    pub body_whole: bool,
}

impl Replay {
    /// A request that can always be sent again (an aggregate's GET part).
    pub const ALWAYS: Replay = Replay {
        idempotent: true,
        body_whole: true,
    };
}

/// One ended attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub outcome: Outcome,
    /// From picking the target to the outcome.
    pub took: Duration,
}

/// Something that learns from every attempt to a pool's targets.
pub trait AttemptObserver: Send + Sync {
    fn observe(&self, upstream: &Upstream, target: &Target, attempt: &Attempt);
}

/// Why no attempt could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every target is unhealthy, drained or held out by its breaker.
    NoTarget,
    /// The pool has `max_inflight` requests in flight.
    MaxInflight,
}

/// `pylon_upstream_duration_seconds{upstream}`: every attempt, answered or not, so the p99
/// does not hide timeouts and resets.
pub struct DurationMetric(pub prometheus::Histogram);

impl AttemptObserver for DurationMetric {
    fn observe(&self, _upstream: &Upstream, _target: &Target, attempt: &Attempt) {
        self.0.observe(attempt.took.as_secs_f64());
    }
}

/// The attempt in progress.
struct Current {
    guard: InflightGuard,
    started: Instant,
    /// From picking the target to its response header, when the outcome waits for the
    /// trailers (a gRPC call's status).
    answered: Option<Duration>,
    reported: bool,
}

/// A request's attempts to reach its upstream.
#[derive(Default)]
pub struct Attempts {
    count: usize,
    /// Targets already tried, so a retry goes elsewhere (no allocation for the first).
    first_tried: Option<SocketAddr>,
    more_tried: Vec<SocketAddr>,
    current: Option<Current>,
    /// The request's place under the pool's `max_inflight`.
    slot: Option<PoolSlot>,
    /// The last attempt's time to its response header, for the access log.
    pub took: Option<Duration>,
}

impl Attempts {
    fn tried(&self, addr: &SocketAddr) -> bool {
        self.first_tried.as_ref() == Some(addr) || self.more_tried.contains(addr)
    }

    /// Pick a target for the next attempt: one not tried yet, else (every target was tried)
    /// any ready one. The first attempt also takes the request's place under `max_inflight`
    /// and counts it in the retry budget.
    pub fn pick(&mut self, upstream: &Upstream, key: &[u8]) -> Result<Box<HttpPeer>, Unavailable> {
        if self.count == 0 {
            self.slot = upstream.enter()?;
        }
        let target = upstream.select(key, |t| self.tried(&t.addr)).or_else(|| {
            self.first_tried
                .is_some()
                .then(|| upstream.select(key, |_| false))
                .flatten()
        });
        let Some(target) = target else {
            upstream.refused();
            return Err(Unavailable::NoTarget);
        };
        if self.count == 0 {
            upstream.deposit();
        }
        self.count += 1;
        if self.first_tried.is_none() {
            self.first_tried = Some(target.addr);
        } else {
            self.more_tried.push(target.addr);
        }
        let peer = Box::new(target.peer.clone());
        self.current = Some(Current {
            guard: target.acquire(),
            started: Instant::now(),
            answered: None,
            reported: false,
        });
        Ok(peer)
    }

    /// How long to wait before this attempt: nothing for the first; before a retry a random
    /// wait up to `base` doubled per retry, capped at `max` (full jitter, so that requests
    /// failing together do not retry together).
    pub fn backoff(&self, upstream: &Upstream) -> Option<Duration> {
        let retry = u32::try_from(self.count).ok().filter(|&n| n > 0)?;
        let b = &upstream.retry_backoff;
        let ceiling = b
            .base
            .0
            .saturating_mul(1 << (retry - 1).min(16))
            .min(b.max.0);
        (!ceiling.is_zero()).then(|| ceiling.mul_f64(rand::random::<f64>()))
    }

    /// The target of the current (or last) attempt.
    pub fn target(&self) -> Option<&Arc<Target>> {
        self.current.as_ref().map(|c| c.guard.target())
    }

    /// Report how the current attempt ended, once, to the pool's observers.
    pub fn report(&mut self, upstream: &Upstream, outcome: Outcome) {
        let Some(current) = self.current.as_mut().filter(|c| !c.reported) else {
            return;
        };
        current.reported = true;
        let attempt = Attempt {
            outcome,
            took: current
                .answered
                .unwrap_or_else(|| current.started.elapsed()),
        };
        if matches!(outcome, Outcome::Status(_) | Outcome::Grpc(_)) {
            self.took = Some(attempt.took);
        }
        let target = current.guard.target();
        for observer in upstream.observers.iter() {
            observer.observe(upstream, target, &attempt);
        }
    }

    /// Whether an attempt was made before the next one.
    pub fn retrying(&self) -> bool {
        self.count > 0
    }

    /// Attempts were made and none got an answer (connect failures, timeouts, resets).
    pub fn unanswered(&self) -> bool {
        self.count > 0 && self.took.is_none()
    }

    /// The current attempt's response header arrived, but its outcome comes with the trailers
    /// (a gRPC call's status): its time is taken now, its report comes later.
    pub fn answered(&mut self) {
        if let Some(current) = self.current.as_mut().filter(|c| !c.reported) {
            let took = current.started.elapsed();
            current.answered = Some(took);
            self.took = Some(took);
        }
    }

    /// Whether the request may go to another attempt after `outcome`; `replay` is asked only
    /// for an answer that could be retried. A retry this allows is taken from the pool's budget
    /// and counted.
    pub fn may_retry(
        &self,
        upstream: &Upstream,
        outcome: Outcome,
        replay: impl FnOnce() -> Replay,
    ) -> bool {
        if self.count > upstream.retries {
            return false;
        }
        let reason = match outcome {
            // The target saw nothing: safe for every method.
            Outcome::Connect { timeout: false } => "connect_error",
            Outcome::Connect { timeout: true } => "connect_timeout",
            // The client has seen nothing yet: another target may answer better, if the
            // target may not have acted on the request.
            Outcome::Status(status @ 502..=504) => match replay() {
                Replay {
                    idempotent: true,
                    body_whole: true,
                } => match status {
                    502 => "status_502",
                    503 => "status_503",
                    _ => "status_504",
                },
                _ => return false,
            },
            // A gRPC server that says UNAVAILABLE did not take the call: any call may go on.
            Outcome::Grpc(Code::UNAVAILABLE) if replay().body_whole => "grpc_unavailable",
            Outcome::Status(_)
            | Outcome::Grpc(_)
            | Outcome::Timeout
            | Outcome::Broken
            | Outcome::Abandoned => return false,
        };
        if !upstream.withdraw() {
            return false;
        }
        count_retry(upstream, reason);
        true
    }
}

/// `pylon_upstream_retries_total{upstream,reason}`; also for the retries Pingora decides (a
/// reused connection the target had closed).
pub fn count_retry(upstream: &Upstream, reason: &str) {
    crate::metrics::METRICS
        .upstream_retries
        .with_label_values(&[&upstream.name, reason])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;
    use std::sync::Mutex;

    struct Seen(Mutex<Vec<(String, Outcome)>>);

    impl AttemptObserver for Seen {
        fn observe(&self, _upstream: &Upstream, target: &Target, attempt: &Attempt) {
            let mut seen = self.0.lock().unwrap();
            seen.push((target.label.to_string(), attempt.outcome));
        }
    }

    fn pool(retries: usize) -> (Upstream, Arc<Seen>) {
        pool_with(&format!("retries = {retries}"))
    }

    fn pool_with(extra: &str) -> (Upstream, Arc<Seen>) {
        let config: UpstreamConfig = toml::from_str(&format!(
            "targets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n{extra}"
        ))
        .unwrap();
        let mut keeper = crate::state::Keeper::new(None);
        let mut upstream = Upstream::build("u", &config, &mut keeper).unwrap();
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        upstream.observers = vec![seen.clone() as Arc<dyn AttemptObserver>].into();
        (upstream, seen)
    }

    #[test]
    fn each_attempt_is_reported_once_to_its_target() {
        let (pool, seen) = pool(1);
        let mut attempts = Attempts::default();
        attempts.pick(&pool, b"").unwrap();
        let first = attempts.target().unwrap().label.to_string();
        attempts.report(&pool, Outcome::Connect { timeout: false });
        attempts.report(&pool, Outcome::Broken);
        assert!(
            attempts.may_retry(&pool, Outcome::Connect { timeout: false }, || Replay {
                idempotent: false,
                body_whole: false
            })
        );
        attempts.pick(&pool, b"").unwrap();
        let second = attempts.target().unwrap().label.to_string();
        assert_ne!(first, second, "a retry goes to another target");
        attempts.report(&pool, Outcome::Status(503));
        let seen = seen.0.lock().unwrap();
        assert_eq!(
            *seen,
            [
                (first, Outcome::Connect { timeout: false }),
                (second, Outcome::Status(503))
            ]
        );
        assert!(attempts.took.is_some());
    }

    #[test]
    fn retry_rules() {
        let (pool, _) = pool(1);
        let mut attempts = Attempts::default();
        attempts.pick(&pool, b"").unwrap();
        assert!(attempts.may_retry(&pool, Outcome::Status(502), || Replay::ALWAYS));
        let post = || Replay {
            idempotent: false,
            body_whole: true,
        };
        assert!(!attempts.may_retry(&pool, Outcome::Status(502), post));
        assert!(attempts.may_retry(&pool, Outcome::Grpc(Code::UNAVAILABLE), post));
        assert!(!attempts.may_retry(&pool, Outcome::Grpc(Code::INTERNAL), post));
        assert!(!attempts.may_retry(&pool, Outcome::Status(500), || Replay::ALWAYS));
        assert!(!attempts.may_retry(&pool, Outcome::Timeout, || Replay::ALWAYS));
        attempts.pick(&pool, b"").unwrap();
        // Out of retries.
        assert!(!attempts.may_retry(&pool, Outcome::Connect { timeout: true }, || Replay::ALWAYS));
    }

    #[test]
    fn max_inflight_counts_requests_not_attempts() {
        let (pool, _) = pool_with("retries = 1\nmax_inflight = 1");
        let mut first = Attempts::default();
        first.pick(&pool, b"").unwrap();
        // A retry of the same request does not take a second place.
        first.pick(&pool, b"").unwrap();
        let mut second = Attempts::default();
        assert_eq!(
            second.pick(&pool, b"").err(),
            Some(Unavailable::MaxInflight)
        );
        drop(first);
        assert!(second.pick(&pool, b"").is_ok());
    }

    #[test]
    fn retries_wait_a_jittered_doubling_backoff_and_spend_the_budget() {
        let (pool, _) =
            pool_with("retries = 3\nretry_budget = { percent = 0, min_per_second = 0 }\nretry_backoff = { base = \"10ms\", max = \"25ms\" }");
        let mut attempts = Attempts::default();
        assert_eq!(
            attempts.backoff(&pool),
            None,
            "no wait before the first attempt"
        );
        attempts.pick(&pool, b"").unwrap();
        for _ in 0..50 {
            assert!(attempts.backoff(&pool).unwrap() <= Duration::from_millis(10));
        }
        attempts.pick(&pool, b"").unwrap();
        attempts.pick(&pool, b"").unwrap();
        // Third retry: 10 ms doubled twice is 40 ms, capped at 25.
        let waits: Vec<_> = (0..200).map(|_| attempts.backoff(&pool).unwrap()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(25)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(10)));
        // An empty budget refuses a retry the rules would allow.
        assert!(
            !attempts.may_retry(&pool, Outcome::Connect { timeout: false }, || {
                Replay::ALWAYS
            })
        );
    }
}
