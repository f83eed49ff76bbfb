//! The retry budget of a pool: retries may add at most `percent` to its load.
//!
//! `retries = N` bounds one request; it does not bound a fleet of requests against a failing
//! upstream, where every request retrying multiplies the load on what is already struggling
//! (a retry storm). The budget, as in Finagle and Linkerd, bounds the sum: over the last
//! [`WINDOW_MS`], retries may be at most `percent` of the requests, plus `min_per_second`
//! so that a quiet pool can still retry. A retry the budget refuses is not made; the failure
//! it would have retried goes to the client. The counts are kept across reloads.

use super::window::{self, Window};
use crate::config::RetryBudgetConfig;

/// The span the budget is measured over.
pub const WINDOW_MS: u64 = 10_000;

/// Requests and retries of one pool over the last [`WINDOW_MS`].
#[derive(Default)]
pub struct RetryBudget {
    window: Window,
}

impl RetryBudget {
    /// A request's first attempt.
    pub fn deposit(&self, now: u64) {
        self.window.add(now, window::bucket_ms(WINDOW_MS), [1, 0]);
    }

    /// Take one retry from the budget; false when it is spent.
    pub fn withdraw(&self, config: &RetryBudgetConfig, now: u64) -> bool {
        let bucket = window::bucket_ms(WINDOW_MS);
        let [requests, retries] = self.window.sum(now, bucket);
        let floor = u64::from(config.min_per_second) * WINDOW_MS / 1_000;
        let share = requests * u64::from(config.percent) / 100;
        if retries >= floor.max(share) {
            return false;
        }
        self.window.add(now, bucket, [0, 1]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use std::time::Duration;

    #[tokio::test]
    async fn retries_stay_within_the_share_and_the_floor() {
        tokio::time::pause();
        let config = RetryBudgetConfig {
            percent: 20,
            min_per_second: 1,
        };
        let budget = RetryBudget::default();
        // Quiet: the floor, 1 per second over 10 s.
        let granted = (0..50)
            .filter(|_| budget.withdraw(&config, now_ms()))
            .count();
        assert_eq!(granted, 10);
        // Busy: 20% of 1,000 requests.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..1_000 {
            budget.deposit(now_ms());
        }
        let granted = (0..500)
            .filter(|_| budget.withdraw(&config, now_ms()))
            .count();
        assert_eq!(granted, 200);
        // The window slides: the budget comes back.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(budget.withdraw(&config, now_ms()));
    }
}
