//! `[cache]`: the storage every route's `cache` policy shares.

use super::*;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The memory tier's budget for stored bodies and headers; the least recently used entries
    /// go first past it.
    #[serde(default = "default_memory_size")]
    pub memory_size: ConfSize,
    /// A larger answer is passed through, not stored.
    #[serde(default = "default_max_object_size")]
    pub max_object_size: ConfSize,
    /// The disk tier's folder: answers are also written there, and found again after a
    /// restart or a binary upgrade. No disk tier without it.
    pub path: Option<PathBuf>,
    /// The disk tier's budget for its files (1 GiB when `path` is given alone).
    pub disk_size: Option<ConfSize>,
    /// A Redis (`redis://HOST:PORT/DB`), or a Redis Cluster's nodes, whose channel carries
    /// purges to every gateway that names it.
    pub purge_redis: Option<Spanned<RedisNodes>>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_size: default_memory_size(),
            max_object_size: default_max_object_size(),
            path: None,
            disk_size: None,
            purge_redis: None,
        }
    }
}

/// One Redis, or the nodes of a Redis Cluster (any one of which carries a published message
/// to every subscriber on the cluster). Shown without passwords.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "a Redis URL, or a list of a Redis Cluster's node URLs"
)]
pub enum RedisNodes {
    One(String),
    Seeds(Vec<String>),
}

impl Serialize for RedisNodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RedisNodes::One(url) => s.serialize_str(&shown_url(url)),
            RedisNodes::Seeds(urls) => serialize_urls(urls, s),
        }
    }
}

impl RedisNodes {
    pub fn urls(&self) -> &[String] {
        match self {
            RedisNodes::One(url) => std::slice::from_ref(url),
            RedisNodes::Seeds(urls) => urls,
        }
    }
}

impl CacheConfig {
    /// The purge channel's Redis URLs; none without one.
    pub fn purge_urls(&self) -> Vec<String> {
        self.purge_redis
            .as_ref()
            .map_or_else(Vec::new, |nodes| nodes.get_ref().urls().to_vec())
    }

    /// The disk tier's folder and budget, if it has one.
    pub fn disk(&self) -> Option<(PathBuf, usize)> {
        let size = self.disk_size.map_or(1 << 30, ConfSize::bytes);
        self.path.clone().map(|path| (path, size))
    }
}

fn default_memory_size() -> ConfSize {
    ConfSize(256 << 20)
}

fn default_max_object_size() -> ConfSize {
    ConfSize(8 << 20)
}
