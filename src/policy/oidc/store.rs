//! Where sessions live: in the cookie itself (sealed, the default), or in Redis or a Redis
//! Cluster (`session_redis`) for a fleet of gateways, the cookie then naming the session.
//!
//! A fleet must refresh a session once: a provider that rotates refresh tokens takes a second
//! use of the old one as theft and revokes the whole grant, which is how sessions get "randomly
//! lost". In Redis, the gateway that begins a refresh claims that refresh token for a few
//! seconds (`SET NX`); another that finds it claimed waits for what the first stores. The claim
//! names the token, not the session, and outlives the refresh: a gateway that read the session
//! just before the new one was stored must not find the old token unclaimed and use it again.

use super::seal::{self, Sealer};
use crate::policy::verified::{self, Verified};
use crate::redis_link::RedisLink;
use async_trait::async_trait;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// A session: who the user is and the provider's tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    pub claims: Arc<Map<String, Value>>,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// When the access token expires (seconds since the epoch).
    pub access_until: u64,
    /// When to refresh it: shortly before it expires.
    pub refresh_at: u64,
    /// When the session ends, whatever refreshes happen.
    pub until: u64,
    /// Its name in a shared store (the cookie carries it, sealed).
    #[serde(skip)]
    pub id: Option<String>,
}

/// Where sessions are kept.
#[async_trait]
pub trait Store: Send + Sync {
    /// The session the request's cookies name: `None` when there is none, or it was changed
    /// or is gone; `Err` when the store did not answer.
    async fn load(&self, headers: &HeaderMap) -> Result<Option<Arc<Session>>, ()>;

    /// Keep `session` (given an id if new): the `Set-Cookie` values that name it, with
    /// `attributes`. `None` when it could not be kept.
    async fn save(&self, session: &mut Session, attributes: &str) -> Option<Vec<HeaderValue>>;

    /// The session is over (logout).
    async fn end(&self, _session: &Session) {}

    /// Before a refresh: whether this gateway should make it (`false`: another one is).
    async fn claim(&self, _session: &Session) -> bool {
        true
    }

    /// A refresh this gateway claimed did not happen: another may try.
    async fn release(&self, _session: &Session) {}

    /// What another gateway's refresh of `session` stored, once it has (`None`: not soon).
    async fn renewed(&self, _session: &Session) -> Option<Arc<Session>> {
        None
    }
}

/// The session in its cookie, sealed (split over several when large). A cookie opened is
/// remembered (by a keyed digest of its whole value, as `jwt` remembers tokens) until its
/// access token is due, so a session's later requests skip the decryption and the parse.
pub struct CookieStore {
    pub sealer: Arc<Sealer>,
    pub name: String,
    parts: Box<[String]>,
    opened: Arc<Verified<Arc<Session>>>,
}

/// The longest an opened cookie is remembered.
const OPENED_TTL: u64 = 300;

impl CookieStore {
    pub fn new(sealer: Arc<Sealer>, name: String, opened: Arc<Verified<Arc<Session>>>) -> Self {
        CookieStore {
            parts: seal::part_names(&name),
            sealer,
            name,
            opened,
        }
    }
}

#[async_trait]
impl Store for CookieStore {
    async fn load(&self, headers: &HeaderMap) -> Result<Option<Arc<Session>>, ()> {
        let Some(sealed) = seal::sealed(headers, &self.parts) else {
            return Ok(None);
        };
        let key = verified::digest(&[self.name.as_bytes(), sealed.as_bytes()]);
        if let Some(session) = self.opened.get(&key) {
            return Ok(Some(session));
        }
        let session: Option<Arc<Session>> = self
            .sealer
            .open(&self.name, &sealed)
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .map(Arc::new);
        if let Some(session) = &session {
            let due = session
                .refresh_at
                .saturating_sub(super::now())
                .min(OPENED_TTL);
            if due > 0 {
                self.opened
                    .put(key, Arc::clone(session), Duration::from_secs(due));
            }
        }
        Ok(session)
    }

    async fn save(&self, session: &mut Session, attributes: &str) -> Option<Vec<HeaderValue>> {
        let plain = serde_json::to_vec(session).ok()?;
        self.sealer.cookies(&self.name, &plain, attributes)
    }
}

/// Sessions in Redis under `pylon:oidc:{ID}`, sealed there too (the key as associated data),
/// so a reader of the store learns no token; the cookie holds the sealed id.
pub struct RedisStore {
    pub sealer: Arc<Sealer>,
    pub name: String,
    pub redis: Arc<RedisLink>,
    pub timeout: Duration,
}

/// How long a claimed refresh stays claimed, and how long another gateway waits for it.
const CLAIM_MS: u64 = 10_000;
const WAIT: Duration = Duration::from_secs(3);

fn key(id: &str) -> String {
    format!("pylon:oidc:{{{id}}}")
}

/// The claim on a refresh of `session` with its current refresh token.
fn claim_key(id: &str, session: &Session) -> String {
    use sha2::Digest;
    let token = session.refresh_token.as_deref().unwrap_or_default();
    let digest = sha2::Sha256::digest(token.as_bytes());
    format!("{}:refresh:{}", key(id), hex::encode(&digest[..12]))
}

impl RedisStore {
    /// A call to Redis within the store's timeout; failures logged.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, ()> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                log::warn!("oidc: session store: {e}");
                Err(())
            }
            Err(_) => {
                log::warn!("oidc: session store: no answer within {:?}", self.timeout);
                Err(())
            }
        }
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ()> {
        self.bounded(async {
            let mut link = self.redis.link().await?;
            cmd.query_async(&mut link).await.map_err(|e| e.to_string())
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<Session>>, ()> {
        let key = key(id);
        let sealed: Option<String> = self.call(redis::cmd("GET").arg(&key)).await?;
        let session = sealed
            .and_then(|s| self.sealer.open(&key, &s))
            .and_then(|plain| serde_json::from_slice::<Session>(&plain).ok())
            .map(|mut s| {
                s.id = Some(id.to_string());
                Arc::new(s)
            });
        Ok(session)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self, headers: &HeaderMap) -> Result<Option<Arc<Session>>, ()> {
        let id = crate::headers::cookie(headers, &self.name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| self.sealer.open(&self.name, v))
            .and_then(|id| String::from_utf8(id).ok());
        match id {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    async fn save(&self, session: &mut Session, attributes: &str) -> Option<Vec<HeaderValue>> {
        let id = session
            .id
            .get_or_insert_with(|| hex::encode(rand::random::<[u8; 32]>()))
            .clone();
        let key = key(&id);
        let sealed = self.sealer.seal(&key, &serde_json::to_vec(session).ok()?)?;
        let left = session.until.saturating_sub(super::now()).max(1);
        self.call::<()>(redis::cmd("SET").arg(&key).arg(sealed).arg("EX").arg(left))
            .await
            .ok()?;
        let cookie = format!(
            "{}={}; {attributes}",
            self.name,
            self.sealer.seal(&self.name, id.as_bytes())?
        );
        HeaderValue::from_str(&cookie).ok().map(|c| vec![c])
    }

    async fn end(&self, session: &Session) {
        if let Some(id) = &session.id {
            let _ = self.call::<()>(redis::cmd("DEL").arg(key(id))).await;
        }
    }

    async fn claim(&self, session: &Session) -> bool {
        let Some(id) = &session.id else { return true };
        let cmd = redis::cmd("SET")
            .arg(claim_key(id, session))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(CLAIM_MS)
            .to_owned();
        // Unable to ask, this gateway refreshes: the session would be lost otherwise.
        self.call::<Option<String>>(&cmd)
            .await
            .map_or(true, |set| set.is_some())
    }

    async fn release(&self, session: &Session) {
        if let Some(id) = &session.id {
            let _ = self
                .call::<()>(redis::cmd("DEL").arg(claim_key(id, session)))
                .await;
        }
    }

    async fn renewed(&self, session: &Session) -> Option<Arc<Session>> {
        let id = session.id.as_deref()?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match self.get(id).await {
                Ok(Some(s)) if s.access_token != session.access_token => return Some(s),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
        None
    }
}
