//! The canary controller: once a second, every split of the running configuration with a
//! canary is judged ([`super::Split::tick`]).

use super::Split;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// The running configuration's splits.
pub trait LiveSplits: Send + Sync {
    fn splits(&self) -> Vec<Arc<Split>>;
}

pub struct CanaryController {
    pub live: Arc<dyn LiveSplits>,
}

#[async_trait::async_trait]
impl BackgroundService for CanaryController {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let now = crate::clock::now_ms();
                    self.live.splits().iter().for_each(|s| s.tick(now));
                }
            }
        }
    }
}
