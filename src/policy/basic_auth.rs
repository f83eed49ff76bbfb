//! `basic_auth`: a user and password in `Authorization: Basic`, checked against bcrypt hashes.
//!
//! bcrypt costs tens of milliseconds of CPU by design. Three things keep that from hurting the
//! gateway: outcomes are remembered for `cache_ttl` (keyed by a digest of the credential), so a
//! client pays once, not per request; hashing runs on blocking threads, never on the proxy's
//! async workers; and at most half the cores hash at once, so a flood of bad passwords queues
//! (then gets 429) instead of pinning every CPU. Unknown users are hashed against a dummy too, so
//! response time does not reveal which users exist.

use super::verified::{self, Verified};
use super::{Auth, Consumer};
use crate::config::BasicAuthConfig;
use base64::Engine;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;

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

/// Users of an htpasswd file. A user that is also a `[consumers.NAME]` gets its groups.
pub fn read_htpasswd(
    path: &std::path::Path,
    consumers: &HashMap<String, Arc<Consumer>>,
) -> Result<Users, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
    let mut users = Users::new();
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
        let consumer = consumers
            .get(user)
            .cloned()
            .unwrap_or_else(|| Arc::new(Consumer::new(user, Vec::new())));
        users.insert(
            user.to_string(),
            User {
                hash: hash.into(),
                consumer,
            },
        );
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
pub type Outcomes = Verified<Option<Arc<Consumer>>>;

pub fn outcomes() -> Arc<Outcomes> {
    Arc::new(Verified::new(CACHE_SIZE))
}

pub struct BasicAuth {
    pub challenge: HeaderValue,
    pub forward_credentials: bool,
    users: Arc<Users>,
    verified: Arc<Outcomes>,
    /// What an unknown user's password is checked against: a hash of the users' own cost, so
    /// a refusal takes as long whether or not the user exists.
    dummy: Arc<str>,
    ttl: Duration,
}

impl BasicAuth {
    /// `verified` may be kept from the previous configuration when the users are the same.
    pub fn new(
        config: &BasicAuthConfig,
        users: Arc<Users>,
        verified: Arc<Outcomes>,
    ) -> Result<BasicAuth, String> {
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        let cost = users
            .values()
            .filter_map(|u| bcrypt_cost(&u.hash).ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash("pylon: no such user", cost).map_err(|e| e.to_string())?;
        Ok(BasicAuth {
            challenge: HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"pylon\"")),
            forward_credentials: config.forward_credentials,
            users,
            verified,
            dummy: dummy.into(),
            ttl: config.cache_ttl.0,
        })
    }

    /// The base64 part of `Authorization: Basic ...`, if the request carries one.
    pub fn credential(req: &pingora::http::RequestHeader) -> Option<&[u8]> {
        super::authorization(req, b"basic ")
    }

    pub async fn authenticate(&self, encoded: &[u8]) -> Auth {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return Auth::Refused("malformed_credentials");
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Auth::Refused("malformed_credentials");
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let digest = verified::digest(&[user, password]);
        if let Some(outcome) = self.verified.get(&digest) {
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
        self.verified.put(digest, outcome.clone(), self.ttl);
        outcome.map_or(Auth::Refused("invalid_credentials"), Auth::consumer)
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
        BasicAuth::new(&config, Arc::new(users), outcomes()).unwrap()
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
            p.authenticate(&encode("alice:wonderland")).await,
            Auth::Granted(_)
        ));
        // Remembered: the same answer again, from the cache.
        assert!(matches!(
            p.authenticate(&encode("alice:wonderland")).await,
            Auth::Granted(_)
        ));
        assert!(matches!(
            p.authenticate(&encode("alice:looking-glass")).await,
            Auth::Refused("invalid_credentials")
        ));
        assert!(matches!(
            p.authenticate(&encode("bob:wonderland")).await,
            Auth::Refused("invalid_credentials")
        ));
        assert!(matches!(
            p.authenticate(b"not base64!").await,
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
