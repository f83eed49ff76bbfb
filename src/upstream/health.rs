//! Active health checks, and the health state of each target.
//!
//! Pingora's checks (`TcpHealthCheck`, `HttpHealthCheck`) probe the targets; the verdicts are
//! kept here, in each target's [`Health`], rather than inside Pingora's `Backends`. That state
//! is carried across reloads (see [`crate::state`]) with the target, so editing a pool neither
//! puts a dead target back into rotation nor forgets what the checks learned. A target that a
//! reload adds to a checked pool starts *unknown* and gets no traffic until a check passes.
//!
//! The [`PoolSupervisor`](super::PoolSupervisor) runs one check loop per checked pool name.
//! Each round checks the pool the live configuration holds under that name; targets that a reload or
//! discovery adds start a round at once, so they are checked promptly. A loop ends when its
//! pool is gone.

use super::{LivePools, Upstream};
use crate::config::{HealthCheckConfig, HealthCheckKind, UpstreamConfig};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting loop looks for targets that wait for their first check.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

/// What the active checks say of one target. Written only by its pool's check loop.
pub struct Health {
    state: AtomicU8,
    /// Consecutive results against the current state.
    streak: AtomicUsize,
}

impl Health {
    /// Healthy until the checks say otherwise: targets of a pool at start, or of a pool
    /// without checks.
    pub fn healthy() -> Health {
        Health {
            state: AtomicU8::new(HEALTHY),
            streak: AtomicUsize::new(0),
        }
    }

    /// Out of rotation until a check passes: targets a reload adds to a checked pool.
    pub fn starting_unknown() -> Health {
        Health {
            state: AtomicU8::new(UNKNOWN),
            streak: AtomicUsize::new(0),
        }
    }

    pub fn ready(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEALTHY
    }

    /// Not checked yet.
    pub fn unknown(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UNKNOWN
    }

    /// Record one check. An unknown target takes the first verdict at once; otherwise it
    /// takes `healthy` consecutive passes or `unhealthy` consecutive failures to flip.
    /// Returns the new state when it flipped.
    pub fn observe(&self, ok: bool, healthy: usize, unhealthy: usize) -> Option<bool> {
        let state = self.state.load(Ordering::Relaxed);
        let target = if ok { HEALTHY } else { UNHEALTHY };
        if state == target {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { healthy } else { unhealthy };
        if state == UNKNOWN || streak >= needed {
            self.state.store(target, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            return Some(ok);
        }
        None
    }
}

/// The name a pool's checks of its static targets use for TLS and `Host`: the pool's `sni`,
/// else the first target's host as written, else the pool's name. Pingora sends one `Host`
/// and one TLS name per check, so discovered targets get a check each for their own name.
pub(super) fn pool_check_name(name: &str, upstream: &UpstreamConfig) -> String {
    upstream.targets.first().map_or_else(
        || upstream.sni.clone().unwrap_or_else(|| name.to_string()),
        |t| super::sni_for(t.get_ref().addr(), upstream),
    )
}

/// Build the Pingora health check a pool's `health_check` describes, for targets known as
/// `target_name` (their TLS name, and the `Host` of HTTP checks unless `host` is set).
pub(super) fn build_check(
    hc: &HealthCheckConfig,
    reach: &super::reach::Reach,
    target_name: &str,
) -> Arc<dyn HealthCheck + Send + Sync> {
    let upstream = &reach.config;
    match hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = if upstream.tls {
                TcpHealthCheck::new_tls(target_name)
            } else {
                TcpHealthCheck::new()
            };
            check.consecutive_success = hc.healthy.get();
            check.consecutive_failure = hc.unhealthy.get();
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(hc.timeout.0);
            o.total_connection_timeout = Some(hc.timeout.0);
            reach.verify(o);
            let check: Box<dyn HealthCheck + Send + Sync> = check;
            Arc::from(check)
        }
        HealthCheckKind::Http => {
            let host = hc.host.as_deref().unwrap_or(target_name);
            let mut check = HttpHealthCheck::new(host, upstream.tls);
            if upstream.tls {
                check.peer_template.sni = target_name.to_string();
            }
            check.consecutive_success = hc.healthy.get();
            check.consecutive_failure = hc.unhealthy.get();
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(hc.timeout.0);
            o.total_connection_timeout = Some(hc.timeout.0);
            o.read_timeout = Some(hc.timeout.0);
            o.write_timeout = Some(hc.timeout.0);
            reach.verify(o);
            // The path was validated at load, so this cannot fail.
            check.req.set_uri(
                http::Uri::try_from(hc.path.get_ref().as_str())
                    .unwrap_or_else(|_| http::Uri::from_static("/")),
            );
            // Any 2xx or 3xx answer means the target serves.
            check.validator = Some(Box::new(|resp| {
                if resp.status.is_success() || resp.status.is_redirection() {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unhealthy status", resp.status.as_u16()),
                        "during http health check",
                    )
                }
            }));
            Arc::new(check)
        }
    }
}

/// The checked pool the live configuration holds under `name`.
fn current(live: &dyn LivePools, name: &str) -> Option<Arc<Upstream>> {
    live.pool(name).filter(|u| u.health_check.is_some())
}

/// Check the pool named `name` every interval until it is gone.
pub(super) async fn check_loop(live: Arc<dyn LivePools>, name: String) {
    while let Some(pool) = current(&*live, &name) {
        pool.run_health_check().await;
        let interval = pool
            .health_check
            .as_ref()
            .map_or(SCAN_INTERVAL, |h| h.interval.0);
        drop(pool);
        let mut waited = Duration::ZERO;
        while waited < interval {
            let step = SCAN_INTERVAL.min(interval - waited);
            tokio::time::sleep(step).await;
            waited += step;
            // A reload removed the pool, or a reload or discovery added targets that wait for
            // their first check: go on now, not after the interval.
            if current(&*live, &name).is_none_or(|p| p.awaits_checks()) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_the_unknown_start() {
        let h = Health::healthy();
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert!(h.ready());
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert!(!h.ready());
        // A pass in between restarts the count.
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));

        let new = Health::starting_unknown();
        assert!(!new.ready(), "an unchecked target gets no traffic");
        assert_eq!(new.observe(true, 2, 3), Some(true));
        assert!(new.ready());
        let bad = Health::starting_unknown();
        assert_eq!(bad.observe(false, 2, 3), Some(false));
        assert!(!bad.ready());
    }
}
