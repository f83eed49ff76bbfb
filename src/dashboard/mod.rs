//! The dashboard: `GET /ui` on the admin listener. One page served from the binary (HTML, a
//! stylesheet and a small script of our own, no library, no CDN) that reads the admin API's JSON
//! every few seconds: `/config`, `/upstreams`, `/reloads` and `/stats`, the last made here.
//! Its drain and enable buttons call the API with the admin token, asked once and kept only in
//! the page; without it the page can look but not change anything.

pub mod sampler;
pub mod series;

use crate::metrics::METRICS;
use crate::runtime::Snapshot;
use prometheus::core::Collector;
use sampler::label;
use serde_json::{json, Map, Value};
use series::{Series, SLOTS, STEP};

/// A file of the page by its path under `/ui/`: its content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "" => Some(("text/html; charset=utf-8", include_bytes!("ui/index.html"))),
        "app.js" => Some((
            "text/javascript; charset=utf-8",
            include_bytes!("ui/app.js"),
        )),
        "app.css" => Some(("text/css; charset=utf-8", include_bytes!("ui/app.css"))),
        _ => None,
    }
}

/// The page may load only its own files and talk only to this listener.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// `GET /stats`: each route's series (oldest first, one slot per `step_seconds`), the
/// certificates served with their expiry, and the caches' counts.
pub fn stats(series: &Series, snapshot: &Snapshot) -> Value {
    let mut certificates = Vec::new();
    for (listen, tls) in &snapshot.tls {
        for e in tls.expiries.iter() {
            certificates.push(json!({
                "listener": listen, "name": e.name, "file": e.file, "not_after": e.not_after,
                "warn_within_seconds": tls.warn_within.as_secs(),
            }));
        }
    }
    json!({
        "step_seconds": STEP.as_secs(),
        "slots": SLOTS,
        "routes": series.view(),
        "certificates": certificates,
        "caches": caches(),
    })
}

/// Cache answers by route and result, and the bytes and entries stored by tier.
fn caches() -> Value {
    let mut routes: Map<String, Value> = Map::new();
    for family in METRICS.cache_requests.collect() {
        for metric in &family.metric {
            let (Some(route), Some(result)) = (label(metric, "route"), label(metric, "result"))
            else {
                continue;
            };
            let counts = routes.entry(route).or_insert_with(|| json!({}));
            counts[result] = json!(metric.counter.value() as u64);
        }
    }
    let mut tiers: Map<String, Value> = Map::new();
    for (key, gauge) in [
        ("bytes", &METRICS.cache_size),
        ("entries", &METRICS.cache_entries),
    ] {
        for family in gauge.collect() {
            for metric in &family.metric {
                let Some(tier) = label(metric, "tier") else {
                    continue;
                };
                let entry = tiers.entry(tier).or_insert_with(|| json!({}));
                entry[key] = json!(metric.gauge.value() as i64);
            }
        }
    }
    json!({ "routes": routes, "tiers": tiers })
}
