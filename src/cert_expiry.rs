//! Certificate expiry, the most common self-inflicted gateway outage: each certificate a
//! listener serves has its `notAfter` as `pylon_tls_certificate_expiry_timestamp_seconds`
//! (for alerts), and one that expires within `[server] cert_expiry_warning` is warned of in
//! the log when it is loaded (at start, on each reload) and again every day it stays in use.

use crate::metrics::METRICS;
use crate::tls::accept::LiveListeners;
use crate::tls::ListenerTls;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Warn of each certificate of a listener that has expired or expires within its warning
/// window; set its gauge.
fn report(listen: &str, tls: &ListenerTls) {
    let now = now();
    let within = tls.warn_within.as_secs() as i64;
    for e in tls.expiries.iter() {
        METRICS
            .tls_expiry
            .with_label_values(&[listen, &e.name])
            .set(e.not_after);
        let left = e.not_after - now;
        if left <= 0 {
            log::warn!(
                "certificate {:?} ({}) on {listen} has expired: clients will refuse it",
                e.file,
                e.name
            );
        } else if left < within {
            log::warn!(
                "certificate {:?} ({}) on {listen} expires in {} days: renew it",
                e.file,
                e.name,
                left / 86_400
            );
        }
    }
}

/// Report every listener's certificates (after a load), the gauges of certificates no longer
/// served removed.
pub fn publish(listeners: &[(String, Arc<ListenerTls>)]) {
    METRICS.tls_expiry.reset();
    for (listen, tls) in listeners {
        report(listen, tls);
    }
}

/// Reports the certificates in use once a day, for a process that runs longer than the
/// warning window without a reload.
pub struct ExpiryWatch {
    pub live: Arc<dyn LiveListeners>,
}

const DAY: Duration = Duration::from_secs(86_400);

#[async_trait]
impl BackgroundService for ExpiryWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            publish(&self.live.listeners());
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(DAY) => {}
            }
        }
    }
}
