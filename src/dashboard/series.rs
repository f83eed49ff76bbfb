//! The dashboard's charts: per route, the requests, server errors and p50/p99 latency of each
//! 5 s of the last 15 minutes, in a ring of fixed size per route.
//!
//! Nothing is added to the request path: every [`STEP`] the sampler ([`super::sampler`]) reads
//! the counters and histogram the request path already keeps for Prometheus
//! (`pylon_requests_total`, `pylon_request_duration_seconds`) and stores the difference since
//! its last reading. Memory is bounded by the configuration's routes: [`SLOTS`] slots of 24
//! bytes each (about 4 KiB per route), a route dropped when the configuration no longer has it.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How much time one slot covers.
pub const STEP: Duration = Duration::from_secs(5);
/// 15 minutes of slots.
pub const SLOTS: usize = 180;

/// A route's cumulative totals at one reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub requests: u64,
    /// Answers with a status of 500 or more.
    pub errors: u64,
    /// The latency histogram: cumulative counts at each upper bound (seconds), `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

/// One step of one route. Latencies in milliseconds, `None` without requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slot {
    pub requests: u32,
    pub errors: u32,
    pub p50_ms: Option<f32>,
    pub p99_ms: Option<f32>,
}

struct Route {
    slots: VecDeque<Slot>,
    last: Reading,
}

/// Every route's ring, filled by the sampler, read by `GET /stats`.
#[derive(Default)]
pub struct Series {
    routes: Mutex<HashMap<String, Route>>,
}

impl Series {
    /// Take one step: `readings` by route name for the routes the configuration has now
    /// (a route without a reading had no requests yet). Routes no longer configured go.
    pub fn step<'a>(
        &self,
        routes: impl Iterator<Item = &'a str>,
        readings: &HashMap<String, Reading>,
    ) {
        let mut kept = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::with_capacity(kept.len());
        for name in routes {
            let now = readings.get(name).cloned().unwrap_or_default();
            let mut route = kept.remove(name).unwrap_or_else(|| Route {
                slots: VecDeque::with_capacity(SLOTS),
                last: now.clone(),
            });
            if route.slots.len() == SLOTS {
                route.slots.pop_front();
            }
            route.slots.push_back(slot(&route.last, &now));
            route.last = now;
            next.insert(name.to_string(), route);
        }
        *kept = next;
    }

    /// Each route's slots, oldest first.
    pub fn view(&self) -> HashMap<String, Vec<Slot>> {
        let kept = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .map(|(name, route)| (name.clone(), route.slots.iter().copied().collect()))
            .collect()
    }
}

/// What happened between two readings. A counter that went back (its series was dropped and
/// made again) counts from zero.
fn slot(before: &Reading, now: &Reading) -> Slot {
    let since = |a: u64, b: u64| if b >= a { b - a } else { b };
    let requests = since(before.requests, now.requests);
    let buckets: Vec<(f64, u64)> = now
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &(bound, count))| {
            let was = before.buckets.get(i).map_or(0, |b| b.1);
            (bound, since(was, count))
        })
        .collect();
    Slot {
        requests: requests.min(u32::MAX as u64) as u32,
        errors: since(before.errors, now.errors).min(u32::MAX as u64) as u32,
        p50_ms: quantile(&buckets, 0.5),
        p99_ms: quantile(&buckets, 0.99),
    }
}

/// The `q` quantile of a cumulative histogram, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; the last finite bound for what fell in `+Inf`.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f32> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some((lower * 1000.0) as f32);
            }
            let within = (count - below) as f64;
            let share = if within > 0.0 {
                (rank - below as f64) / within
            } else {
                1.0
            };
            return Some(((lower + (bound - lower) * share) * 1000.0) as f32);
        }
        (lower, below) = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(requests: u64, errors: u64, buckets: &[(f64, u64)]) -> Reading {
        Reading {
            requests,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn quantiles_are_interpolated_within_their_bucket() {
        // 100 requests: 50 under 1 ms, 40 more under 10 ms, 10 more under 100 ms.
        let b = [(0.001, 50), (0.01, 90), (0.1, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.5), Some(1.0));
        assert!((quantile(&b, 0.99).unwrap() - 91.0).abs() < 0.01);
        assert_eq!(quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
        // Everything past the last bound: the last bound.
        assert_eq!(quantile(&[(0.5, 0), (f64::INFINITY, 4)], 0.99), Some(500.0));
    }

    #[test]
    fn each_step_stores_the_difference_and_the_ring_is_bounded() {
        let series = Series::default();
        let inf = f64::INFINITY;
        let mut readings = HashMap::new();
        series.step(["a"].into_iter(), &readings);
        readings.insert("a".into(), reading(10, 2, &[(0.01, 10), (inf, 10)]));
        series.step(["a", "b"].into_iter(), &readings);
        let view = series.view();
        assert_eq!(view["a"].len(), 2);
        assert_eq!(view["a"][0], Slot::default());
        assert_eq!(view["a"][1].requests, 10);
        assert_eq!(view["a"][1].errors, 2);
        assert_eq!(view["a"][1].p50_ms, Some(5.0));
        assert_eq!(view["b"], [Slot::default()]);
        for _ in 0..SLOTS + 20 {
            series.step(["a"].into_iter(), &readings);
        }
        let view = series.view();
        assert_eq!(view["a"].len(), SLOTS);
        assert!(
            !view.contains_key("b"),
            "a route gone from the configuration goes"
        );
        assert!(view["a"].iter().all(|s| s.requests == 0));
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        let before = reading(100, 5, &[]);
        let now = reading(7, 1, &[]);
        let s = slot(&before, &now);
        assert_eq!((s.requests, s.errors), (7, 1));
    }
}
