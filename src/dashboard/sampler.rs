//! Every [`STEP`], one step of the dashboard's [`Series`] from the request metrics the request
//! path already keeps: the charts cost requests nothing.

use super::series::{Reading, Series, STEP};
use crate::metrics::METRICS;
use crate::runtime::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::core::Collector;
use prometheus::proto::Metric;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Sampler {
    pub series: Arc<Series>,
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.snapshot.load();
            let routes = snapshot.checked.config.routes.iter();
            self.series
                .step(routes.map(|r| r.name.get_ref().as_str()), &readings());
        }
    }
}

/// The value of a metric's label.
pub fn label<'a>(metric: &'a Metric, name: &str) -> Option<&'a str> {
    let pair = metric.label.iter().find(|p| p.name() == name)?;
    Some(pair.value())
}

/// Every route's totals now.
pub fn readings() -> HashMap<String, Reading> {
    let mut by_route: HashMap<String, Reading> = HashMap::new();
    for family in METRICS.requests.collect() {
        for metric in &family.metric {
            let Some(route) = label(metric, "route") else {
                continue;
            };
            let count = metric.counter.value() as u64;
            let reading = by_route.entry(route.to_string()).or_default();
            reading.requests += count;
            let status = label(metric, "status").and_then(|s| s.parse::<u16>().ok());
            if status.is_some_and(|s| s >= 500) {
                reading.errors += count;
            }
        }
    }
    for family in METRICS.request_duration.collect() {
        for metric in &family.metric {
            let Some(route) = label(metric, "route") else {
                continue;
            };
            let histogram = &metric.histogram;
            let mut buckets: Vec<(f64, u64)> = histogram
                .bucket
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            buckets.push((f64::INFINITY, histogram.sample_count()));
            by_route.entry(route.to_string()).or_default().buckets = buckets;
        }
    }
    by_route
}
