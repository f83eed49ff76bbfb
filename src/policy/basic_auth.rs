//! `basic_auth`: a user and password in `Authorization: Basic`, checked against bcrypt hashes.
//!
//! bcrypt costs tens of milliseconds of CPU by design. Three things keep that from hurting the
//! gateway: outcomes are remembered for `cache_ttl` (keyed by a digest of the credential), so a
//! client pays once, not per request; hashing runs on blocking threads, never on the proxy's
//! async workers; and at most half the cores hash at once, so a flood of bad passwords queues
//! (then gets 429) instead of pinning every CPU. Unknown users are hashed against a dummy too, so
//! response time does not reveal which users exist.

use super::auth::{self, Auth, Authenticator, Found};
use super::verified::{self, Verified};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfigError};
use crate::consumer::Consumer;
use crate::filter::Context;
use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const KIND: Kind = Kind {
    name: "basic_auth",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    #[serde(default = "default_realm")]
    pub realm: String,
    /// An htpasswd file of `user:bcrypt-hash` lines; otherwise consumers' `basic_auth` entries.
    pub htpasswd: Option<PathBuf>,
    /// How long a verified (or refused) credential is remembered, sparing bcrypt.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: ConfDuration,
    #[serde(default)]
    pub forward_credentials: bool,
    pub anonymous: Option<String>,
}

fn default_realm() -> String {
    "pylon".into()
}

fn default_cache_ttl() -> ConfDuration {
    ConfDuration(Duration::from_secs(60))
}

struct BasicAuthSpec {
    config: BasicAuthConfig,
    /// The users of the htpasswd file, read and checked at parse.
    htpasswd: Option<Vec<(String, Arc<str>)>>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: BasicAuthConfig = src.settings()?;
    let mut errors = Vec::new();
    src.check_anonymous(&config.anonymous, &mut errors);
    let htpasswd = match &config.htpasswd {
        Some(path) => match read_htpasswd(path) {
            Ok(users) => Some(users),
            Err(e) => {
                errors.push(src.place.error(e));
                None
            }
        },
        None => {
            if !src.consumers.values().any(|c| c.basic_auth.is_some()) {
                errors.push(src.place.error(
                    "basic_auth has no users: name an `htpasswd` file or give consumers `basic_auth`",
                ));
            }
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(BasicAuthSpec { config, htpasswd }))
}

impl Spec for BasicAuthSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let mut users = Users::new();
        match &self.htpasswd {
            // A user that is also a `[consumers.NAME]` gets its groups.
            Some(entries) => {
                for (user, hash) in entries {
                    let consumer = cx
                        .consumers
                        .get(user)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Consumer::new(user, Vec::new())));
                    let hash = Arc::clone(hash);
                    users.insert(user.clone(), User { hash, consumer });
                }
            }
            None => {
                for (name, consumer) in &cx.config.consumers {
                    if let Some(cred) = &consumer.basic_auth {
                        let cred = cred.get_ref();
                        users.insert(
                            cred.user.clone(),
                            User {
                                hash: cred.password_hash.expose().into(),
                                consumer: cx.consumer(name)?,
                            },
                        );
                    }
                }
            }
        }
        // Remembered outcomes stay valid while the policy and its users are unchanged: a
        // reload must not send every client back through bcrypt at once.
        let verified = cx.keeper.keep_default::<_, Outcomes>(
            "basic_auth",
            cx.name,
            fingerprint(&self.config, &users),
        );
        // What an unknown user's password is checked against: a hash of the users' own cost,
        // so a refusal takes as long whether or not the user exists. Made once per cost.
        let cost = users
            .values()
            .filter_map(|u| bcrypt_cost(&u.hash).ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = cx.keeper.keep("bcrypt_dummy", "", cost, || {
            bcrypt::hash("pylon: no such user", cost).map_err(|e| e.to_string())
        })?;
        let anonymous = cx.anonymous(&self.config.anonymous)?;
        Ok(Compiled::Auth(Arc::new(BasicAuth::new(
            cx.name,
            &self.config,
            Arc::new(users),
            verified,
            dummy.as_str().into(),
            anonymous,
        ))))
    }
}

/// Verifications remembered per policy.
const CACHE_SIZE: usize = 10_000;
/// How long a request waits for a free hashing slot before it is told to come back.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Hashing slots for the whole process: half the cores, at least one.
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Semaphore::new((cores / 2).max(1))
});

/// The highest bcrypt cost accepted: 2^15 rounds take about 2 s of a core; a higher cost in a
/// config is a mistake that would let each login hold a hashing slot for minutes.
pub const MAX_COST: u32 = 15;

/// One user: the bcrypt hash and the consumer it identifies.
pub struct User {
    pub hash: Arc<str>,
    pub consumer: Arc<Consumer>,
}

pub type Users = HashMap<String, User>;

/// The cost of a bcrypt hash this policy can check (`$2a$`, `$2b$`, `$2y$`, cost at most
/// [`MAX_COST`]), or why it cannot.
pub fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    let versioned = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
    let cost = match hash.parse::<bcrypt::HashParts>() {
        Ok(parts) if versioned => parts.get_cost(),
        _ => return Err("not a bcrypt hash ($2a$, $2b$ or $2y$, as made by `htpasswd -B`)".into()),
    };
    if cost > MAX_COST {
        return Err(format!(
            "bcrypt cost {cost} is above the maximum of {MAX_COST}"
        ));
    }
    Ok(cost)
}

/// The users of an htpasswd file, each hash checked.
fn read_htpasswd(path: &std::path::Path) -> Result<Vec<(String, Arc<str>)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("{}: expected `user:hash`", at()))?;
        if let Err(e) = bcrypt_cost(hash) {
            return Err(format!("{}: user `{user}`: {e}", at()));
        }
        users.push((user.to_string(), hash.into()));
    }
    Ok(users)
}

/// A digest of a policy's settings and its users (names, hashes, consumers and their groups):
/// equal fingerprints mean remembered outcomes still hold.
pub fn fingerprint(config: &BasicAuthConfig, users: &Users) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{config:?}"));
    let mut names: Vec<&String> = users.keys().collect();
    names.sort();
    for name in names {
        let u = &users[name];
        h.update(format!(
            "\0{name}\0{}\0{}\0{:?}",
            u.hash, u.consumer.name, u.consumer.groups
        ));
    }
    h.finalize().into()
}

/// Outcomes by credential digest: `Some` consumer when the password was right.
pub struct Outcomes(Verified<Option<Arc<Consumer>>>);

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes(Verified::new(CACHE_SIZE))
    }
}

pub struct BasicAuth {
    name: Arc<str>,
    challenge: HeaderValue,
    forward_credentials: bool,
    users: Arc<Users>,
    verified: Arc<Outcomes>,
    dummy: Arc<str>,
    ttl: Duration,
    anonymous: Option<Arc<Consumer>>,
}

impl BasicAuth {
    /// `verified` may be kept from the previous configuration when the users are the same.
    pub fn new(
        name: &str,
        config: &BasicAuthConfig,
        users: Arc<Users>,
        verified: Arc<Outcomes>,
        dummy: Arc<str>,
        anonymous: Option<Arc<Consumer>>,
    ) -> BasicAuth {
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        BasicAuth {
            name: name.into(),
            challenge: HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"pylon\"")),
            forward_credentials: config.forward_credentials,
            users,
            verified,
            dummy,
            ttl: config.cache_ttl.0,
            anonymous,
        }
    }

    /// The base64 part of `Authorization: Basic ...`, if the request carries one.
    pub fn credential(req: &RequestHeader) -> Option<&[u8]> {
        auth::authorization(req, b"basic ")
    }

    pub async fn check(&self, encoded: &[u8]) -> Auth {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return Auth::Refused("malformed_credentials");
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Auth::Refused("malformed_credentials");
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let digest = verified::digest(&[user, password]);
        if let Some(outcome) = self.verified.0.get(&digest) {
            return outcome.map_or(Auth::Refused("invalid_credentials"), Auth::consumer);
        }
        let user = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get(u));
        let hash = user.map_or_else(|| Arc::clone(&self.dummy), |u| Arc::clone(&u.hash));
        let Some(matches) = check(password.to_vec(), hash).await else {
            return Auth::Busy;
        };
        let outcome = user.filter(|_| matches).map(|u| Arc::clone(&u.consumer));
        self.verified.0.put(digest, outcome.clone(), self.ttl);
        outcome.map_or(Auth::Refused("invalid_credentials"), Auth::consumer)
    }
}

#[async_trait]
impl Authenticator for BasicAuth {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
        _cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)> {
        let encoded = BasicAuth::credential(req)?;
        let found =
            (!self.forward_credentials).then_some(Found::Header(http::header::AUTHORIZATION));
        Some((self.check(encoded).await, found))
    }

    fn challenge(&self, _reason: &str) -> HeaderValue {
        self.challenge.clone()
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }
}

/// bcrypt on a blocking thread, within the process's hashing slots; `None` when none freed up
/// in time.
async fn check(password: Vec<u8>, hash: Arc<str>) -> Option<bool> {
    let _slot = tokio::time::timeout(HASH_QUEUE_WAIT, HASHING.acquire())
        .await
        .ok()?
        .ok()?;
    let result = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash));
    Some(matches!(result.await, Ok(Ok(true))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: &str) -> pingora::http::RequestHeader {
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", authorization).unwrap();
        req
    }

    fn policy() -> BasicAuth {
        let consumer = Arc::new(Consumer::new("alice", vec![]));
        let users = Users::from([(
            "alice".to_string(),
            User {
                hash: bcrypt::hash("wonderland", 4).unwrap().into(),
                consumer,
            },
        )]);
        let config: BasicAuthConfig = toml::from_str("").unwrap();
        let dummy = bcrypt::hash("dummy", 4).unwrap();
        BasicAuth::new(
            "b",
            &config,
            Arc::new(users),
            Arc::default(),
            dummy.into(),
            None,
        )
    }

    fn encode(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    #[test]
    fn finds_the_credential() {
        assert_eq!(
            BasicAuth::credential(&request("basic  YTpi ")),
            Some(&b"YTpi"[..])
        );
        assert_eq!(BasicAuth::credential(&request("Bearer x")), None);
    }

    #[tokio::test]
    async fn checks_passwords() {
        let p = policy();
        assert!(matches!(
            p.check(&encode("alice:wonderland")).await,
            Auth::Granted(_)
        ));
        // Remembered: the same answer again, from the cache.
        assert!(matches!(
            p.check(&encode("alice:wonderland")).await,
            Auth::Granted(_)
        ));
        assert!(matches!(
            p.check(&encode("alice:looking-glass")).await,
            Auth::Refused("invalid_credentials")
        ));
        assert!(matches!(
            p.check(&encode("bob:wonderland")).await,
            Auth::Refused("invalid_credentials")
        ));
        assert!(matches!(
            p.check(b"not base64!").await,
            Auth::Refused("malformed_credentials")
        ));
    }

    #[test]
    fn recognizes_bcrypt() {
        let h = bcrypt::hash("x", 4).unwrap();
        assert_eq!(bcrypt_cost(&h), Ok(4));
        assert_eq!(bcrypt_cost(&h.replacen("$2b$", "$2y$", 1)), Ok(4));
        assert!(bcrypt_cost(&h.replacen("$2b$04$", "$2b$31$", 1)).is_err());
        assert!(bcrypt_cost("$apr1$abc$def").is_err());
        assert!(bcrypt_cost("{SHA}abc").is_err());
    }
}
