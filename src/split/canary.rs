//! A canary backend's ramp and its automatic rollback.
//!
//! Once a second the controller asks [`Canary::judge`] what the canary's last `window` says:
//! with at least `min_requests` in it, an error rate past `max_error_rate` or a p99 past
//! `max_p99` rolls it back to weight 0 at once; otherwise, every `every`, its weight rises by
//! `step` up to `max_weight`. The p99 needs no histogram: it passes `max_p99` exactly when more
//! than 1% of the requests took longer, which is a count. A rolled-back canary stays at 0 until
//! the configuration changes or an operator resumes it.

use crate::config::CanaryConfig;
use serde::Serialize;

pub struct Canary {
    /// Which backend of the split.
    pub backend: usize,
    pub step: u32,
    every_ms: u64,
    pub max_weight: u32,
    max_error_rate: f64,
    /// Requests slower than this count against the p99.
    pub max_p99_ms: Option<u64>,
    min_requests: u64,
    pub window_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Ramping,
    /// No more steps until resumed; a rollback still happens.
    Paused,
    RolledBack,
    /// It takes every request (an operator promoted it); nothing more happens.
    Promoted,
}

/// Where a canary is, carried across reloads that leave the split unchanged.
#[derive(Debug, Clone, Copy)]
pub struct CanaryState {
    pub phase: Phase,
    /// When its weight last rose (or the ramp began), in ms.
    pub stepped_ms: u64,
}

/// The canary's last window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Verdict {
    pub requests: u64,
    pub errors: u64,
    /// Requests slower than `max_p99`.
    pub slow: u64,
}

/// What the judge decided.
#[derive(Debug, PartialEq)]
pub enum Event {
    Step { to: u32 },
    Rollback { why: String },
}

impl Canary {
    pub fn compile(backend: usize, config: &CanaryConfig) -> Canary {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Canary {
            backend,
            step: config.step,
            every_ms: ms(config.every.0),
            max_weight: config.max_weight,
            max_error_rate: config.max_error_rate,
            max_p99_ms: config.max_p99.map(|d| ms(d.0)),
            min_requests: config.min_requests,
            window_ms: ms(config.window.0),
        }
    }

    /// What happens to a canary at `weight` whose window says `seen`, at `now_ms`.
    pub fn judge(
        &self,
        state: &mut CanaryState,
        weight: u32,
        seen: Verdict,
        now_ms: u64,
    ) -> Option<Event> {
        if matches!(state.phase, Phase::RolledBack | Phase::Promoted) {
            return None;
        }
        if seen.requests >= self.min_requests && seen.requests > 0 {
            let rate = seen.errors as f64 / seen.requests as f64;
            let why = if rate > self.max_error_rate {
                Some(format!(
                    "error rate {rate:.3} over {} requests passed {}",
                    seen.requests, self.max_error_rate
                ))
            } else if self.max_p99_ms.is_some() && seen.slow * 100 > seen.requests {
                Some(format!(
                    "p99 passed {} ms ({} of {} requests slower)",
                    self.max_p99_ms.unwrap_or_default(),
                    seen.slow,
                    seen.requests
                ))
            } else {
                None
            };
            if let Some(why) = why {
                state.phase = Phase::RolledBack;
                return Some(Event::Rollback { why });
            }
        }
        if state.phase == Phase::Ramping
            && weight < self.max_weight
            && now_ms.saturating_sub(state.stepped_ms) >= self.every_ms
        {
            state.stepped_ms = now_ms;
            return Some(Event::Step {
                to: (weight + self.step).min(self.max_weight),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfDuration;
    use std::time::Duration;

    fn canary() -> Canary {
        Canary::compile(
            1,
            &CanaryConfig {
                step: 10,
                every: ConfDuration(Duration::from_secs(60)),
                max_weight: 30,
                max_error_rate: 0.05,
                max_p99: Some(ConfDuration(Duration::from_millis(500))),
                min_requests: 100,
                window: ConfDuration(Duration::from_secs(60)),
            },
        )
    }

    fn fine(requests: u64) -> Verdict {
        Verdict {
            requests,
            ..Verdict::default()
        }
    }

    #[test]
    fn the_weight_steps_up_to_its_maximum() {
        let c = canary();
        let mut s = CanaryState {
            phase: Phase::Ramping,
            stepped_ms: 0,
        };
        assert_eq!(c.judge(&mut s, 10, fine(500), 59_999), None);
        assert_eq!(
            c.judge(&mut s, 10, fine(500), 60_000),
            Some(Event::Step { to: 20 })
        );
        assert_eq!(c.judge(&mut s, 20, fine(500), 100_000), None);
        assert_eq!(
            c.judge(&mut s, 25, fine(500), 120_000),
            Some(Event::Step { to: 30 })
        );
        assert_eq!(c.judge(&mut s, 30, fine(500), 999_000), None);
        s.phase = Phase::Paused;
        assert_eq!(c.judge(&mut s, 10, fine(500), 999_000), None);
    }

    #[test]
    fn errors_or_slowness_roll_it_back_once_enough_requests_were_seen() {
        let c = canary();
        let ramping = || CanaryState {
            phase: Phase::Ramping,
            stepped_ms: 0,
        };
        let failing = Verdict {
            requests: 99,
            errors: 99,
            slow: 0,
        };
        // Too few requests to judge: a step instead.
        let mut s = ramping();
        assert_eq!(
            c.judge(&mut s, 10, failing, 60_000),
            Some(Event::Step { to: 20 })
        );
        let failing = Verdict {
            requests: 100,
            errors: 6,
            slow: 0,
        };
        let mut s = ramping();
        assert!(matches!(
            c.judge(&mut s, 10, failing, 1),
            Some(Event::Rollback { .. })
        ));
        assert_eq!(s.phase, Phase::RolledBack);
        // Rolled back: nothing more, however long.
        assert_eq!(c.judge(&mut s, 0, fine(500), 9_999_999), None);
        // 1% slower than max_p99 is within; 2 of 100 is not.
        let mut s = ramping();
        let slow = |n| Verdict {
            requests: 100,
            errors: 5,
            slow: n,
        };
        assert_eq!(c.judge(&mut s, 10, slow(1), 1), None);
        assert!(matches!(
            c.judge(&mut s, 10, slow(2), 1),
            Some(Event::Rollback { .. })
        ));
        // A paused canary is still rolled back.
        let mut s = CanaryState {
            phase: Phase::Paused,
            stepped_ms: 0,
        };
        assert!(matches!(
            c.judge(&mut s, 10, slow(2), 1),
            Some(Event::Rollback { .. })
        ));
    }
}
