//! The background loops of every live pool: health checks ([`health`](super::health)) and
//! discovery ([`discovery`](super::discovery)), one of each kind per pool name that needs it.
//!
//! Loops are per name rather than per pool: a reload rebuilds pools, and the loop goes on with
//! the rebuilt one (found in the live configuration each round) until the name is gone.

use super::{discovery, health, Upstream};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the supervisor looks for pools that a reload added.
const SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// The pools of the live configuration, which a reload replaces: the loops look their pool
/// up here by name every round. The running snapshot implements it (`crate::runtime`), so
/// this layer need not know the snapshot.
pub trait LivePools: Send + Sync + 'static {
    /// The pool the live configuration holds under `name`.
    fn pool(&self, name: &str) -> Option<Arc<Upstream>>;

    /// Every pool of the live configuration, with its name.
    fn pools(&self) -> Vec<(String, Arc<Upstream>)>;
}

pub struct PoolSupervisor {
    live: Arc<dyn LivePools>,
}

impl PoolSupervisor {
    pub fn new(live: Arc<dyn LivePools>) -> Self {
        PoolSupervisor { live }
    }
}

#[async_trait]
impl BackgroundService for PoolSupervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut running: HashMap<(String, &'static str), JoinHandle<()>> = HashMap::new();
        loop {
            running.retain(|_, task| !task.is_finished());
            for (name, upstream) in self.live.pools() {
                let live = || Arc::clone(&self.live);
                if upstream.health_check.is_some() {
                    running
                        .entry((name.clone(), "health"))
                        .or_insert_with(|| tokio::spawn(health::check_loop(live(), name.clone())));
                }
                if upstream.discovered().is_some() {
                    running
                        .entry((name.clone(), "discovery"))
                        .or_insert_with(|| {
                            tokio::spawn(discovery::refresh_loop(live(), name.clone()))
                        });
                }
            }
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
