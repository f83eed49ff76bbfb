//! `api_key`: identify the consumer by a key in a header or query parameter.
//!
//! Keys are held as SHA-256 digests (`sha256:<hex>` in the config, or a plain key hashed at
//! load), and a presented key is hashed and looked up in one hash map: O(1), and no comparison
//! ever runs over the secret itself, so its timing tells nothing about stored keys.

use super::{Consumer, Found};
use crate::config::ApiKeyConfig;
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub type KeyDigest = [u8; 32];

/// The digest a configured key stands for: `sha256:<64 hex digits>`, or a plain key hashed.
pub fn key_digest(configured: &str) -> Result<KeyDigest, String> {
    if let Some(hex) = configured.strip_prefix("sha256:") {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex, &mut digest)
            .map_err(|_| "a `sha256:` key needs 64 hex digits".to_string())?;
        Ok(digest)
    } else if configured.is_empty() {
        Err("an API key cannot be empty".into())
    } else {
        Ok(Sha256::digest(configured.as_bytes()).into())
    }
}

/// Consumers by the digest of their API keys, shared by every `api_key` policy.
#[derive(Default)]
pub struct KeyIndex(HashMap<KeyDigest, Arc<Consumer>>);

impl KeyIndex {
    pub fn insert(&mut self, digest: KeyDigest, consumer: Arc<Consumer>) {
        self.0.insert(digest, consumer);
    }

    pub fn lookup(&self, presented: &[u8]) -> Option<&Arc<Consumer>> {
        let digest: KeyDigest = Sha256::digest(presented).into();
        self.0.get(&digest)
    }
}

pub struct ApiKey {
    pub challenge: HeaderValue,
    pub header: HeaderName,
    pub query: Option<String>,
    pub forward_credentials: bool,
    pub keys: Arc<KeyIndex>,
}

impl ApiKey {
    pub fn new(config: &ApiKeyConfig, keys: Arc<KeyIndex>) -> Result<ApiKey, String> {
        let challenge = format!("ApiKey realm=\"pylon\", header=\"{}\"", config.header);
        Ok(ApiKey {
            challenge: HeaderValue::from_str(&challenge).map_err(|e| e.to_string())?,
            header: HeaderName::from_bytes(config.header.as_bytes()).map_err(|e| e.to_string())?,
            query: config.query.clone(),
            forward_credentials: config.forward_credentials,
            keys,
        })
    }

    /// The presented key and where it was, if the request carries one.
    pub fn credential<'a>(
        &self,
        req: &'a pingora::http::RequestHeader,
    ) -> Option<(&'a [u8], Found)> {
        if let Some(v) = req.headers.get(&self.header) {
            return Some((v.as_bytes(), Found::Header(self.header.clone())));
        }
        let name = self.query.as_deref()?;
        let query = req.uri.query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name && !v.is_empty()).then(|| (v.as_bytes(), Found::Query(name.to_string())))
        })
    }
}

/// `query` without the parameter `name`.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let plain = key_digest("hunter2").unwrap();
        let hex = format!("sha256:{}", hex::encode(plain));
        assert_eq!(key_digest(&hex).unwrap(), plain);
        assert!(key_digest("sha256:abc").is_err());
        assert!(key_digest("").is_err());
    }

    #[test]
    fn query_stripping() {
        assert_eq!(strip_query_param("a=1&api_key=s&b=2", "api_key"), "a=1&b=2");
        assert_eq!(strip_query_param("api_key=s", "api_key"), "");
        assert_eq!(strip_query_param("api_keyx=1", "api_key"), "api_keyx=1");
    }
}
