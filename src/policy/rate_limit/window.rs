//! The sliding-window counter: the arithmetic shared by the local and the Redis store.
//!
//! Windows are aligned to the Unix epoch, so every gateway agrees on them. A request is
//! admitted when the previous window's count, weighted by how much of it still overlaps the
//! last `window`, plus the current count stays within the allowance. Unlike a fixed window it
//! gives no 2x burst across a boundary (100 at 0.99 s and 100 at 1.01 s), and unlike GCRA it
//! admits exactly `limit` from a standing start, which is what operators read `100 per 1s` as.
//! It stores two counters per key, not a log of timestamps.

use std::time::Duration;

/// Counts of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Which window `curr` counts: Unix milliseconds divided by the window length.
    pub index: u64,
    pub prev: u64,
    pub curr: u64,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests still admitted in the current window.
    pub remaining: u64,
    /// Until the current window ends.
    pub reset: Duration,
    /// Until a request would be admitted again (zero when this one was).
    pub retry_after: Duration,
}

impl Window {
    /// Count a request at `now_ms` if the allowance has room for it.
    pub fn hit(&mut self, now_ms: u64, window_ms: u64, allowance: u64) -> Outcome {
        let index = now_ms / window_ms;
        if index == self.index + 1 {
            self.prev = self.curr;
            self.curr = 0;
        } else if index != self.index {
            self.prev = 0;
            self.curr = 0;
        }
        self.index = index;
        let into = now_ms % window_ms;
        let allowed = estimate(self.prev, self.curr, into, window_ms) + 1.0 <= allowance as f64;
        if allowed {
            self.curr += 1;
        }
        outcome(allowed, self.prev, self.curr, into, window_ms, allowance)
    }
}

/// Requests counted over the last `window_ms`, `into_ms` into the current window.
fn estimate(prev: u64, curr: u64, into_ms: u64, window_ms: u64) -> f64 {
    prev as f64 * (window_ms - into_ms) as f64 / window_ms as f64 + curr as f64
}

/// The outcome of a check, from the counts after it.
pub fn outcome(
    allowed: bool,
    prev: u64,
    curr: u64,
    into_ms: u64,
    window_ms: u64,
    allowance: u64,
) -> Outcome {
    let used = estimate(prev, curr, into_ms, window_ms);
    let remaining = (allowance as f64 - used).max(0.0).floor() as u64;
    let reset_ms = window_ms - into_ms;
    let retry_ms = if allowed {
        0
    } else if curr + 1 > allowance {
        // Not before the next window, and then not before `curr` (by then the previous
        // window's count) has decayed enough.
        let need = (curr + 1 - allowance) as f64 / curr as f64;
        reset_ms + (need * window_ms as f64).ceil() as u64
    } else {
        // Within this window, once enough of the previous one has slid out.
        let excess = used + 1.0 - allowance as f64;
        ((excess / prev.max(1) as f64) * window_ms as f64).ceil() as u64
    };
    Outcome {
        allowed,
        remaining,
        reset: Duration::from_millis(reset_ms),
        retry_after: Duration::from_millis(retry_ms.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_exactly_the_limit_from_a_standing_start() {
        let mut w = Window::default();
        let admitted = (0..500)
            .filter(|_| w.hit(10_000, 1000, 100).allowed)
            .count();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn no_double_burst_across_a_boundary() {
        let mut w = Window::default();
        let late = (0..100)
            .filter(|_| w.hit(10_990, 1000, 100).allowed)
            .count();
        let early = (0..100)
            .filter(|_| w.hit(11_010, 1000, 100).allowed)
            .count();
        assert_eq!(late, 100);
        // 99% of the previous window still overlaps: one more request, not a hundred.
        assert!(early <= 2, "{early}");
        // Half way through, half the allowance is back.
        let half = (0..100)
            .filter(|_| w.hit(11_500, 1000, 100).allowed)
            .count();
        assert!((48..=51).contains(&half), "{half}");
    }

    #[test]
    fn reports_remaining_and_when_to_retry() {
        let mut w = Window::default();
        let o = w.hit(20_250, 1000, 3);
        assert_eq!((o.allowed, o.remaining), (true, 2));
        assert_eq!(o.reset, Duration::from_millis(750));
        w.hit(20_250, 1000, 3);
        w.hit(20_250, 1000, 3);
        let o = w.hit(20_300, 1000, 3);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        // The next window, plus a third of it for one of the three to slide out.
        assert_eq!(o.retry_after, Duration::from_millis(700 + 334));
        // A long idle gap forgets everything.
        let o = w.hit(90_000, 1000, 3);
        assert_eq!((o.allowed, o.remaining), (true, 2));
    }
}
