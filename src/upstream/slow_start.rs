//! Slow start: a target that joins a pool, or comes back to it, ramps up to its full share.
//!
//! A target back from a restart has cold caches, connection pools and JITs; its full share
//! of a busy pool's traffic at once can knock it over again. Each target remembers when it
//! (re)joined: added by a reload or discovery, healthy again after failing its checks, its
//! breaker closed, enabled after a drain. For `slow_start` after that, selection lets a
//! request go to it only with probability `elapsed / slow_start` (at least
//! [`MIN_SHARE`]), and the balancer moves on to the next target otherwise; its share of
//! traffic grows linearly, as Envoy's slow start with aggression 1 does.

use std::sync::atomic::{AtomicU64, Ordering};

/// The least share of its traffic a ramping target gets.
pub const MIN_SHARE: f64 = 0.1;

/// When a target last joined, in clock milliseconds; zero: it has been in from the start.
#[derive(Default)]
pub struct Joined(AtomicU64);

impl Joined {
    pub fn at(now: u64) -> Joined {
        Joined(AtomicU64::new(now))
    }

    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::Relaxed);
    }

    /// The share of its full traffic the target gets at `now`, for a ramp of `ramp_ms`.
    pub fn share(&self, now: u64, ramp_ms: u64) -> f64 {
        let since = self.0.load(Ordering::Relaxed);
        if since == 0 || ramp_ms == 0 {
            return 1.0;
        }
        let share = now.saturating_sub(since) as f64 / ramp_ms as f64;
        if share >= 1.0 {
            1.0
        } else {
            share.max(MIN_SHARE)
        }
    }

    /// Whether this request may go to the target, drawn at its current share.
    pub fn admits(&self, now: u64, ramp_ms: u64) -> bool {
        let share = self.share(now, ramp_ms);
        share >= 1.0 || rand::random::<f64>() < share
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use std::time::Duration;

    #[tokio::test]
    async fn the_share_grows_over_the_ramp() {
        tokio::time::pause();
        let joined = Joined::at(now_ms());
        assert_eq!(joined.share(now_ms(), 10_000), MIN_SHARE);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!((joined.share(now_ms(), 10_000) - 0.5).abs() < 1e-3);
        let admitted = (0..10_000)
            .filter(|_| joined.admits(now_ms(), 10_000))
            .count();
        assert!((4_500..5_500).contains(&admitted), "{admitted}");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(joined.share(now_ms(), 10_000), 1.0);
        assert_eq!(Joined::default().share(now_ms(), 10_000), 1.0);
    }
}
