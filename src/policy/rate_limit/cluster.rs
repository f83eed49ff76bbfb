//! Windows in Redis, shared by every gateway of a cluster.
//!
//! One round trip per check: a Lua script (sent as `EVALSHA`, loaded on `NOSCRIPT`) rolls the
//! window, checks and counts atomically, on Redis's clock so gateways with skewed clocks still
//! agree. Each key is one hash (`i`, `p`, `c`) with a TTL of two windows, named
//! `pylon:rl:{...}` so that Redis Cluster places it by the whole braced part. Requests share
//! one multiplexed, pipelining connection that reconnects on its own; every call is bounded by
//! `store_timeout`. The script needs Redis 5 or later (`TIME` before writes). Pylon speaks to
//! one endpoint: a standalone Redis, a replicated primary, or a cluster proxy; it does not
//! follow Redis Cluster `MOVED` redirections itself.

use super::window::{self, Outcome};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::OnceCell;

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
    pub url: String,
    pub timeout: Duration,
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
}

impl ClusterWindows {
    pub fn new(url: &str, timeout: Duration) -> Result<ClusterWindows, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid redis_url: {e}"))?;
        Ok(ClusterWindows {
            url: url.to_string(),
            timeout,
            client,
            connection: OnceCell::new(),
            script: redis::Script::new(SCRIPT),
        })
    }

    /// Count a request under `key` if the allowance has room. Errors are Redis being down,
    /// slow (over `store_timeout`) or answering nonsense.
    pub async fn hit(&self, key: &str, window_ms: u64, allowance: u64) -> Result<Outcome, String> {
        let call = async {
            let mut conn = self.connection().await?;
            let (allowed, prev, curr, into): (u8, u64, u64, u64) = self
                .script
                .key(key)
                .arg(window_ms)
                .arg(allowance)
                // Two windows, as an integer: Lua would print large numbers as `1e+08`.
                .arg(window_ms.saturating_mul(2))
                .invoke_async(&mut conn)
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

    /// The shared connection, set up on first use (inside the proxy's runtime).
    async fn connection(&self) -> Result<ConnectionManager, String> {
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }
}
