//! One shared connection to Redis, a standalone node (or a replicated primary, or a cluster
//! proxy) or a Redis Cluster, for the policies that keep state there (cluster rate limits,
//! `oidc` sessions).
//!
//! Requests share one multiplexed, pipelining connection that reconnects on its own. With a
//! Cluster, the `redis` crate's cluster client learns the slot map, follows `MOVED` and `ASK`
//! and talks to each node directly: with a node down, the keys it owns fail while the keys on
//! live nodes go on working. Callers bound each call with their own timeout.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How the link reaches Redis.
enum Endpoint {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// The shared connection of either kind, cheap to clone (one per call).
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisLink {
    endpoint: Endpoint,
    connection: OnceCell<Link>,
}

impl RedisLink {
    /// Check the addresses while the file is read: `what` names the setting in the message.
    pub fn check(url: Option<&str>, seeds: &[String], what: &str) -> Result<(), String> {
        for url in url.into_iter().chain(seeds.iter().map(String::as_str)) {
            redis::Client::open(url).map_err(|e| format!("invalid {what} {url:?}: {e}"))?;
        }
        Ok(())
    }

    /// A link to one endpoint (`url`), else to the cluster of `seeds`; `timeout` bounds a
    /// cluster node's answers (the cluster client retries on another node within it).
    pub fn new(url: Option<&str>, seeds: &[String], timeout: Duration) -> Result<Self, String> {
        let endpoint = match url {
            Some(url) => Endpoint::Single(
                redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?,
            ),
            None => Endpoint::Cluster(Box::new(
                ClusterClient::builder(seeds.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster: {e}"))?,
            )),
        };
        Ok(RedisLink {
            endpoint,
            connection: OnceCell::new(),
        })
    }

    /// The shared connection, set up on first use (inside the proxy's runtime). Both kinds
    /// connect lazily and reconnect by themselves.
    pub async fn link(&self) -> Result<Link, String> {
        self.connection
            .get_or_try_init(|| async {
                match &self.endpoint {
                    Endpoint::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(Duration::from_secs(1)))
                            .set_number_of_retries(1)
                            .set_max_delay(Duration::from_millis(500));
                        ConnectionManager::new_lazy_with_config(client.clone(), config)
                            .map(Link::Single)
                            .map_err(|e| e.to_string())
                    }
                    // Connected in the background: a request's own timeout bounds its call,
                    // never the setup that later requests need.
                    Endpoint::Cluster(client) => Ok(Link::Cluster(
                        client.get_pending_async_connection_with_config(
                            redis::cluster::ClusterConfig::new(),
                        ),
                    )),
                }
            })
            .await
            .cloned()
    }
}
