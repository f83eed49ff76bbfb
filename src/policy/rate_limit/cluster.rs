//! Windows in Redis, shared by every gateway of a cluster.
//!
//! One round trip per check: a Lua script (sent as `EVALSHA`, loaded on `NOSCRIPT`) rolls the
//! window, checks and counts atomically, on Redis's clock so gateways with skewed clocks still
//! agree. Each key is one hash (`i`, `p`, `c`) with a TTL of two windows, named
//! `pylon:rl:{...}` so that Redis Cluster places it by the whole braced part: the script
//! touches one key, so it always runs on the one node that owns the key's slot. Requests
//! share one multiplexed, pipelining connection that reconnects on its own; every call is
//! bounded by `store_timeout`. The script needs Redis 5 or later (`TIME` before writes).
//!
//! Two kinds of store: one endpoint (`redis_url`: a standalone Redis, a replicated primary or
//! a cluster proxy), or a Redis Cluster (`redis_cluster`: seed nodes), through the `redis`
//! crate's cluster client, which learns the slot map, follows `MOVED` and `ASK`, and talks to
//! each node directly. With a node down, the keys it owns fail (and `on_store_error`
//! decides) while keys on the live nodes go on being counted.

use super::window::{self, Outcome};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How the store reaches Redis.
enum Endpoint {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// The shared connection of either kind.
#[derive(Clone)]
enum Link {
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

const SCRIPT: &str = r"
local w = tonumber(ARGV[1])
local allowance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / w)
local s = redis.call('HMGET', KEYS[1], 'i', 'p', 'c')
local i = tonumber(s[1]) or index
local p = tonumber(s[2]) or 0
local c = tonumber(s[3]) or 0
if i == index - 1 then
  p = c
  c = 0
elseif i ~= index then
  p = 0
  c = 0
end
local into = now % w
local allowed = 0
if p * (w - into) / w + c + 1 <= allowance then
  c = c + 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'i', index, 'p', p, 'c', c)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {allowed, p, c, into}
";

pub struct ClusterWindows {
    pub timeout: Duration,
    endpoint: Endpoint,
    connection: OnceCell<Link>,
    script: redis::Script,
}

impl ClusterWindows {
    /// Check the addresses while the file is read.
    pub fn check(url: Option<&str>, seeds: &[String]) -> Result<(), String> {
        if let Some(url) = url {
            redis::Client::open(url).map_err(|e| format!("invalid redis_url {url:?}: {e}"))?;
        }
        for seed in seeds {
            redis::Client::open(seed.as_str())
                .map_err(|e| format!("invalid redis_cluster node {seed:?}: {e}"))?;
        }
        Ok(())
    }

    /// A store on one endpoint (`url`), else on the cluster of `seeds`.
    pub fn new(
        url: Option<&str>,
        seeds: &[String],
        timeout: Duration,
    ) -> Result<ClusterWindows, String> {
        let endpoint = match url {
            Some(url) => Endpoint::Single(
                redis::Client::open(url).map_err(|e| format!("invalid redis_url: {e}"))?,
            ),
            None => Endpoint::Cluster(Box::new(
                ClusterClient::builder(seeds.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| format!("invalid redis_cluster: {e}"))?,
            )),
        };
        Ok(ClusterWindows {
            timeout,
            endpoint,
            connection: OnceCell::new(),
            script: redis::Script::new(SCRIPT),
        })
    }

    /// Count a request under `key` if the allowance has room. Errors are Redis being down,
    /// slow (over `store_timeout`) or answering nonsense.
    pub async fn hit(&self, key: &str, window_ms: u64, allowance: u64) -> Result<Outcome, String> {
        let call = async {
            let mut link = self.connection().await?;
            let (allowed, prev, curr, into): (u8, u64, u64, u64) = self
                .script
                .key(key)
                .arg(window_ms)
                .arg(allowance)
                // Two windows, as an integer: Lua would print large numbers as `1e+08`.
                .arg(window_ms.saturating_mul(2))
                .invoke_async(&mut link)
                .await
                .map_err(|e| e.to_string())?;
            Ok(window::outcome(
                allowed == 1,
                prev,
                curr,
                into,
                window_ms,
                allowance,
            ))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    /// The shared connection, set up on first use (inside the proxy's runtime). Both kinds
    /// connect lazily and reconnect by themselves.
    async fn connection(&self) -> Result<Link, String> {
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
                    // Connected in the background: a request's `store_timeout` bounds its own
                    // call, never the setup that later requests need.
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
