//! JWKS: an identity provider's published signing keys, fetched and kept fresh.
//!
//! A background service ([`JwksRefresher`]) refetches every `jwks_refresh`; a token whose `kid`
//! names no known key triggers a refetch at most once per `jwks_min_refresh`, which is how a
//! rotation is picked up at once without letting made-up `kid`s hammer the provider. A failed
//! fetch keeps the last good set: a provider outage must not become a gateway outage.
//!
//! The key set carries a generation that changes only when the document does, so tokens
//! verified under a key that has since been removed are checked again, and fail.

use super::keys::Family;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A JWKS document larger than this is refused.
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One verification key.
pub struct Key {
    pub key: DecodingKey,
    pub family: Family,
    /// The `alg` the provider pinned this key to, if any.
    pub alg: Option<Algorithm>,
}

#[derive(Default)]
pub struct KeySet {
    pub generation: u64,
    pub by_kid: HashMap<String, Arc<Key>>,
    /// Every key, for tokens without a `kid`.
    pub all: Vec<Arc<Key>>,
    document: bytes::Bytes,
}

pub struct Jwks {
    pub url: String,
    refresh: Duration,
    min_refresh: Duration,
    client: reqwest::Client,
    keys: ArcSwap<KeySet>,
    /// When a fetch was last started, successful or not.
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; requests waiting for a refetch see its result.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: &str, refresh: Duration, min_refresh: Duration) -> Result<Jwks, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(Jwks {
            url: url.to_string(),
            refresh,
            min_refresh,
            client,
            keys: ArcSwap::default(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// The key `kid` names and the generation of the set it is in, refetching the set first
    /// (rate limited) when it names none.
    pub async fn key(&self, kid: &str) -> Option<(Arc<Key>, u64)> {
        let find = |set: &KeySet| set.by_kid.get(kid).map(|k| (Arc::clone(k), set.generation));
        if let Some(found) = find(&self.keys.load()) {
            return Some(found);
        }
        self.refetch(self.min_refresh).await;
        find(&self.keys.load())
    }

    /// Fetch unless a fetch started less than `interval` ago.
    async fn refetch(&self, interval: Duration) {
        let _one = self.fetching.lock().await;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(document) => self.install(document),
            Err(e) => log::warn!("JWKS {}: {e}; keeping the last good key set", self.url),
        }
    }

    async fn fetch(&self) -> Result<bytes::Bytes, String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetch answered {}", resp.status()));
        }
        if resp.content_length().unwrap_or(0) > MAX_DOCUMENT as u64 {
            return Err("the document is too large".into());
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        if body.len() > MAX_DOCUMENT {
            return Err("the document is too large".into());
        }
        Ok(body)
    }

    fn install(&self, document: bytes::Bytes) {
        let current = self.keys.load();
        if current.document == document {
            return;
        }
        match parse(&document) {
            Ok(mut set) => {
                set.generation = current.generation + 1;
                set.document = document;
                log::info!("JWKS {}: {} keys", self.url, set.all.len());
                self.keys.store(Arc::new(set));
            }
            Err(e) => log::warn!("JWKS {}: {e}; keeping the last good key set", self.url),
        }
    }
}

/// The signature keys of a JWKS document. Keys of unknown types, encryption keys and symmetric
/// keys are skipped: a published set has no business holding a shared secret.
fn parse(document: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document =
        serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let key = Arc::new(Key { key, family, alg });
        if let Some(kid) = jwk.common.key_id {
            set.by_kid.insert(kid, Arc::clone(&key));
        }
        set.all.push(key);
    }
    // An empty set is the provider withdrawing every key: it is installed like any other.
    Ok(set)
}

/// The key sets the live configuration uses, which a reload replaces. The running snapshot
/// implements it (`crate::runtime`) from the state it carries, so this layer need not know
/// the snapshot.
pub trait LiveKeySets: Send + Sync + 'static {
    fn key_sets(&self) -> Vec<Arc<Jwks>>;
}

/// Keeps every JWKS of the current configuration fresh.
pub struct JwksRefresher {
    pub live: Arc<dyn LiveKeySets>,
}

#[async_trait::async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let sets = self.live.key_sets();
            let due = sets.iter().map(|j| {
                // Never fetched yet: retry at the unknown-kid pace, not the slow one.
                let interval = if j.keys().generation == 0 {
                    j.min_refresh
                } else {
                    j.refresh
                };
                j.refetch(interval)
            });
            futures::future::join_all(due).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signature_keys_only() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"oct","kid":"s1","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"e1","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"weird","kid":"w1"}
        ]}"#;
        let set = parse(doc).unwrap();
        assert_eq!(set.all.len(), 1);
        assert!(set.by_kid.contains_key("r1"));
        assert_eq!(set.by_kid["r1"].alg, Some(Algorithm::RS256));
        assert!(parse(br#"{"keys":[]}"#).unwrap().all.is_empty());
        assert!(parse(b"nope").is_err());
    }
}
