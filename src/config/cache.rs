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
    /// A Redis (`redis://HOST:PORT/DB`) whose channel carries purges to every gateway that
    /// names it.
    pub purge_redis: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_size: default_memory_size(),
            max_object_size: default_max_object_size(),
            purge_redis: None,
        }
    }
}

fn default_memory_size() -> ConfSize {
    ConfSize(256 << 20)
}

fn default_max_object_size() -> ConfSize {
    ConfSize(8 << 20)
}
