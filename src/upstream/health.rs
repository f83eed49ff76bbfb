//! Active health checks, run in Pingora's background service.
//!
//! Pingora's `LoadBalancer` can run its own checks as a background service, but services are
//! fixed when the server starts, and pools come and go on reload. One [`HealthSupervisor`]
//! therefore watches the live snapshot and gives each pool its own check loop; a loop ends when
//! its pool is dropped by a reload. A pool kept across a reload keeps its loop and health state.

use super::Upstream;
use crate::config::{HealthCheckConfig, HealthCheckKind, UpstreamConfig};
use crate::runtime::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the supervisor looks for pools that a reload added.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// Build the Pingora health check a pool's `health_check` describes.
pub(super) fn build_check(
    name: &str,
    hc: &HealthCheckConfig,
    upstream: &UpstreamConfig,
) -> Box<dyn HealthCheck + Send + Sync> {
    match hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = if upstream.tls {
                let first = upstream
                    .targets
                    .first()
                    .map_or(name, |t| t.get_ref().addr());
                TcpHealthCheck::new_tls(&super::sni_for(first, upstream))
            } else {
                TcpHealthCheck::new()
            };
            check.consecutive_success = hc.healthy.get();
            check.consecutive_failure = hc.unhealthy.get();
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(hc.timeout.0);
            o.total_connection_timeout = Some(hc.timeout.0);
            o.verify_cert = upstream.verify;
            o.verify_hostname = upstream.verify;
            check
        }
        HealthCheckKind::Http => {
            // Pingora sends one Host (and SNI) to every target of a pool: the configured one,
            // else the pool's `sni`, else the first target's host as written.
            let target_name = upstream.targets.first().map_or_else(
                || name.to_string(),
                |t| super::sni_for(t.get_ref().addr(), upstream),
            );
            let host = hc.host.as_deref().unwrap_or(&target_name);
            let mut check = HttpHealthCheck::new(host, upstream.tls);
            if upstream.tls {
                check.peer_template.sni = target_name.clone();
            }
            check.consecutive_success = hc.healthy.get();
            check.consecutive_failure = hc.unhealthy.get();
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(hc.timeout.0);
            o.total_connection_timeout = Some(hc.timeout.0);
            o.read_timeout = Some(hc.timeout.0);
            o.write_timeout = Some(hc.timeout.0);
            o.verify_cert = upstream.verify;
            o.verify_hostname = upstream.verify;
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
            Box::new(check)
        }
    }
}

/// Background service running every live pool's health checks.
pub struct HealthSupervisor {
    snapshot: SharedSnapshot,
}

impl HealthSupervisor {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        HealthSupervisor { snapshot }
    }
}

async fn check_loop(pool: Weak<Upstream>, interval: Duration) {
    loop {
        let Some(upstream) = pool.upgrade() else {
            return;
        };
        upstream.run_health_check().await;
        drop(upstream);
        tokio::time::sleep(interval).await;
    }
}

#[async_trait]
impl BackgroundService for HealthSupervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut running: HashMap<usize, Weak<Upstream>> = HashMap::new();
        loop {
            running.retain(|_, pool| pool.strong_count() > 0);
            let snapshot = self.snapshot.load_full();
            for upstream in snapshot.upstreams.values() {
                let Some(hc) = &upstream.health_check else {
                    continue;
                };
                let id = Arc::as_ptr(upstream) as usize;
                if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(id) {
                    slot.insert(Arc::downgrade(upstream));
                    tokio::spawn(check_loop(Arc::downgrade(upstream), hc.interval.0));
                }
            }
            drop(snapshot);
            tokio::select! {
                _ = tokio::time::sleep(SCAN_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
