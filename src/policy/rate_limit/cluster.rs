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
use crate::redis_link::RedisLink;
use std::time::Duration;

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
    redis: RedisLink,
    script: redis::Script,
}

impl ClusterWindows {
    /// Check the addresses while the file is read.
    pub fn check(url: Option<&str>, seeds: &[String]) -> Result<(), String> {
        let what = if url.is_some() {
            "redis_url"
        } else {
            "redis_cluster node"
        };
        RedisLink::check(url, seeds, what)
    }

    /// A store on one endpoint (`url`), else on the cluster of `seeds`.
    pub fn new(
        url: Option<&str>,
        seeds: &[String],
        timeout: Duration,
    ) -> Result<ClusterWindows, String> {
        Ok(ClusterWindows {
            timeout,
            redis: RedisLink::new(url, seeds, timeout)?,
            script: redis::Script::new(SCRIPT),
        })
    }

    /// Count a request under `key` if the allowance has room. Errors are Redis being down,
    /// slow (over `store_timeout`) or answering nonsense.
    pub async fn hit(&self, key: &str, window_ms: u64, allowance: u64) -> Result<Outcome, String> {
        let call = async {
            let mut link = self.redis.link().await?;
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
}
