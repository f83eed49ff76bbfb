//! `api_key`: identify the consumer by a key in a header or query parameter.
//!
//! Keys are held as SHA-256 digests (`sha256:<hex>` in the config, or a plain key hashed at
//! load), and a presented key is hashed and looked up in one hash map: O(1), and no comparison
//! ever runs over the secret itself, so its timing tells nothing about stored keys.

use super::auth::{Auth, Authenticator, Found};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::consumer::Consumer;
use crate::filter::Context;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "api_key",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Header the key is read from.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter the key may be read from instead.
    pub query: Option<String>,
    /// Send the key upstream too (it is stripped by default).
    #[serde(default)]
    pub forward_credentials: bool,
    /// Consumer for requests without a key (requests with a bad key are still refused).
    pub anonymous: Option<String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

struct ApiKeySpec {
    config: ApiKeyConfig,
    header: HeaderName,
    challenge: HeaderValue,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: ApiKeyConfig = src.settings()?;
    let mut errors = Vec::new();
    src.check_anonymous(&config.anonymous, &mut errors);
    let header = HeaderName::from_bytes(config.header.as_bytes());
    let challenge = HeaderValue::from_str(&format!(
        "ApiKey realm=\"pylon\", header=\"{}\"",
        config.header
    ));
    match (header, challenge) {
        (Ok(header), Ok(challenge)) if errors.is_empty() => Ok(Arc::new(ApiKeySpec {
            config,
            header,
            challenge,
        })),
        (Ok(_), Ok(_)) => Err(errors),
        _ => {
            errors.push(
                src.place
                    .error(format!("invalid header name {:?}", config.header)),
            );
            Err(errors)
        }
    }
}

impl Spec for ApiKeySpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let mut keys = KeyIndex::default();
        for (name, consumer) in &cx.config.consumers {
            let c = cx.consumer(name)?;
            for key in &consumer.api_keys {
                keys.insert(key_digest(key.get_ref().expose())?, Arc::clone(&c));
            }
        }
        let anonymous = cx.anonymous(&self.config.anonymous)?;
        Ok(Compiled::Auth(Arc::new(ApiKey {
            name: cx.name.into(),
            challenge: self.challenge.clone(),
            header: self.header.clone(),
            query: self.config.query.clone(),
            forward_credentials: self.config.forward_credentials,
            keys,
            anonymous,
        })))
    }
}

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

/// Consumers by the digest of their API keys.
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
    name: Arc<str>,
    challenge: HeaderValue,
    header: HeaderName,
    query: Option<String>,
    forward_credentials: bool,
    keys: KeyIndex,
    anonymous: Option<Arc<Consumer>>,
}

impl ApiKey {
    /// The presented key and where it was, if the request carries one.
    fn credential<'a>(&self, req: &'a RequestHeader) -> Option<(&'a [u8], Found)> {
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

#[async_trait]
impl Authenticator for ApiKey {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
        _cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)> {
        let (presented, found) = self.credential(req)?;
        let auth = match self.keys.lookup(presented) {
            Some(c) => Auth::consumer(Arc::clone(c)),
            None => Auth::Refused("invalid_credentials"),
        };
        Some((auth, (!self.forward_credentials).then_some(found)))
    }

    fn challenge(&self, _reason: &str) -> HeaderValue {
        self.challenge.clone()
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }
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

    #[tokio::test]
    async fn finds_keys_in_header_or_query() {
        let mut keys = KeyIndex::default();
        keys.insert(
            key_digest("k1").unwrap(),
            Arc::new(Consumer::new("c", vec![])),
        );
        let policy = ApiKey {
            name: "keys".into(),
            challenge: HeaderValue::from_static("ApiKey"),
            header: HeaderName::from_static("x-api-key"),
            query: Some("api_key".into()),
            forward_credentials: false,
            keys,
            anonymous: None,
        };
        let req = RequestHeader::build("GET", b"/?a=1&api_key=k1", None).unwrap();
        let (auth, found) = policy
            .authenticate(&req, &mut Context::default())
            .await
            .unwrap();
        assert!(matches!(auth, Auth::Granted(_)));
        assert_eq!(found, Some(Found::Query("api_key".into())));
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-api-key", "nope").unwrap();
        let (auth, _) = policy
            .authenticate(&req, &mut Context::default())
            .await
            .unwrap();
        assert!(matches!(auth, Auth::Refused("invalid_credentials")));
        let bare = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(policy
            .authenticate(&bare, &mut Context::default())
            .await
            .is_none());
    }
}
