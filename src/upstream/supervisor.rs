//! The background loops of every live pool: health checks ([`health`](super::health)) and
//! discovery ([`discovery`](super::discovery)), one of each kind per pool name that needs it.
//!
//! Loops are per name rather than per pool: a reload rebuilds pools, and the loop goes on with
//! the rebuilt one (found in the live snapshot each round) until the name is gone.

use super::{discovery, health};
use crate::runtime::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the supervisor looks for pools that a reload added.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);

pub struct PoolSupervisor {
    snapshot: SharedSnapshot,
}

impl PoolSupervisor {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        PoolSupervisor { snapshot }
    }
}

#[async_trait]
impl BackgroundService for PoolSupervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut running: HashMap<(String, &'static str), JoinHandle<()>> = HashMap::new();
        loop {
            running.retain(|_, task| !task.is_finished());
            let snapshot = self.snapshot.load_full();
            for (name, upstream) in &snapshot.upstreams {
                let shared = || Arc::clone(&self.snapshot);
                if upstream.health_check.is_some() {
                    running.entry((name.clone(), "health")).or_insert_with(|| {
                        tokio::spawn(health::check_loop(shared(), name.clone()))
                    });
                }
                if upstream.discovered().is_some() {
                    running
                        .entry((name.clone(), "discovery"))
                        .or_insert_with(|| {
                            tokio::spawn(discovery::refresh_loop(shared(), name.clone()))
                        });
                }
            }
            drop(snapshot);
            tokio::select! {
                _ = tokio::time::sleep(SCAN_INTERVAL) => {}
                _ = shutdown.changed() => {
                    for task in running.values() {
                        task.abort();
                    }
                    return;
                }
            }
        }
    }
}
