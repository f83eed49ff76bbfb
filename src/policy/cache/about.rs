//! What an entry was stored for: its key, its route, path and query (as the key has them), and
//! the tags its answer gave it (`Surrogate-Key`, `Cache-Tag`). A purge selects entries by these,
//! in either tier; the disk tier writes them beside each answer so a restart can find them.

use pingora_cache::key::{CacheHashKey, CacheKey, CompactCacheKey};
use pingora_cache::CacheMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct About {
    pub key: CompactCacheKey,
    pub names: Names,
}

/// The parts a purge matches on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Names {
    pub route: String,
    pub path: String,
    pub query: String,
    pub tags: Vec<String>,
}

impl About {
    pub fn of(key: &CacheKey, meta: &CacheMeta) -> About {
        let mut names = Names::default();
        // The key's lines are `name:length:value` (key.rs).
        for line in key.primary_key_str().unwrap_or_default().lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(_), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            match name {
                "route" => names.route = value.to_string(),
                "path" => names.path = value.to_string(),
                "query" => names.query = value.to_string(),
                _ => {}
            }
        }
        let headers = meta.headers();
        let surrogate = headers.get_all("surrogate-key").iter();
        let tags = surrogate.flat_map(|v| v.to_str().unwrap_or("").split_ascii_whitespace());
        let cache_tag = headers.get_all("cache-tag").iter();
        let tags = tags.chain(cache_tag.flat_map(|v| v.to_str().unwrap_or("").split(',')));
        names.tags = tags
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        About {
            key: key.to_compact(),
            names,
        }
    }

    /// The key's hash, primary and variance together: one per entry.
    pub fn id(&self) -> [u8; 16] {
        self.key.combined_bin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;
    use std::time::SystemTime;

    #[test]
    fn names_come_from_the_key_and_tags_from_the_answer() {
        let key = CacheKey::new("route:1:r\npath:2:/a\nquery:3:x=1\n", "");
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .append_header("surrogate-key", "news  sport")
            .unwrap();
        header.append_header("cache-tag", "a, b").unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, header);
        let about = About::of(&key, &meta);
        assert_eq!(about.names.route, "r");
        assert_eq!(about.names.path, "/a");
        assert_eq!(about.names.query, "x=1");
        assert_eq!(about.names.tags, ["news", "sport", "a", "b"]);
        assert_eq!(about.id(), key.combined_bin());
    }
}
