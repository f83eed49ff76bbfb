//! Purges across a fleet: with `[cache] purge_redis`, a purge sent to one gateway is applied
//! there and published on a Redis channel, and every gateway subscribed to it applies it too.
//!
//! The subscriber is a background service that follows the running configuration: it
//! subscribes to the configured Redis, reconnects (and says so in the log) when the channel is
//! lost, and moves to another Redis when a reload changes the URL. A gateway ignores the
//! messages it published itself: it applied them when it was asked.
//!
//! On a Redis Cluster (a list of nodes) a message published on any node reaches the
//! subscribers of every node (the cluster bus carries it), so a gateway publishes through the
//! first node that answers and subscribes to one node at a time, moving to the next when it
//! loses it. Redis keeps no message for a subscriber that is away: a purge published while a
//! gateway reconnects does not reach it.

use super::{LiveCaches, Purge};
use crate::config::redacted_url;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The channel every gateway of a fleet shares.
const CHANNEL: &str = "pylon:cache:purge";

/// This process, to recognise its own messages.
static ORIGIN: LazyLock<u64> = LazyLock::new(|| {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
});

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    origin: u64,
    #[serde(flatten)]
    purge: Purge,
    soft: bool,
}

/// Apply `purge` to every cache of the running configuration: how many entries it took.
pub fn apply(live: &dyn LiveCaches, purge: &Purge, soft: bool) -> usize {
    live.caches().iter().map(|s| s.purge(purge, soft)).sum()
}

/// Publish `purge` to the other gateways, through the first of `nodes` that takes it.
pub async fn publish(nodes: &[String], purge: Purge, soft: bool) -> Result<(), String> {
    let message = Message {
        origin: *ORIGIN,
        purge,
        soft,
    };
    let payload = serde_json::to_string(&message).map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for url in nodes {
        match publish_on(url, &payload).await {
            Ok(()) => return Ok(()),
            Err(e) => failed.push(format!("{}: {e}", redacted_url(url))),
        }
    }
    Err(failed.join("; "))
}

async fn publish_on(url: &str, payload: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let send = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(2), send).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 2 s".into()),
    }
}

pub struct PurgeSubscriber {
    pub live: Arc<dyn LiveCaches>,
}

impl PurgeSubscriber {
    /// Follow `url`'s channel until it is lost, the configuration names other `nodes`, or
    /// shutdown.
    async fn follow(
        &self,
        nodes: &[String],
        url: &str,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
        pubsub.subscribe(CHANNEL).await.map_err(|e| e.to_string())?;
        log::info!(
            "cache purges: subscribed to {CHANNEL} on {}",
            redacted_url(url)
        );
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tick.tick() => {
                    if self.live.purge_redis() != nodes {
                        return Ok(());
                    }
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("the connection closed".into());
                    };
                    let payload = message.get_payload_bytes();
                    match serde_json::from_slice::<Message>(payload) {
                        Ok(m) if m.origin == *ORIGIN => {}
                        Ok(m) => {
                            let purged = apply(&*self.live, &m.purge, m.soft);
                            log::info!("cache purges: {:?} from another gateway took {purged}", m.purge);
                        }
                        Err(e) => log::warn!("cache purges: a message that is not a purge: {e}"),
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for PurgeSubscriber {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The node to try next, and how many in a row could not be followed.
        let (mut next, mut failed) = (0, 0);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let nodes = self.live.purge_redis();
            if !nodes.is_empty() {
                let url = &nodes[next % nodes.len()];
                match self.follow(&nodes, url, &mut shutdown).await {
                    Ok(()) => failed = 0,
                    Err(e) => {
                        log::warn!(
                            "cache purges: lost {}: {e}; reconnecting",
                            redacted_url(url)
                        );
                        (next, failed) = (next + 1, failed + 1);
                    }
                }
            }
            // The next node at once; a pause once every node has failed.
            if failed == 0 || failed % nodes.len().max(1) == 0 {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_message_is_the_admin_call_with_its_origin() {
        let m: Message =
            serde_json::from_str(r#"{"origin": 7, "tag": "news", "soft": true}"#).unwrap();
        assert_eq!(m.purge, Purge::Tag { tag: "news".into() });
        assert!(m.soft);
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["tag"], "news");
    }
}
