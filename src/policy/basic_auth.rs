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

/// What an unknown user's password is checked against, so that costs the same as a known one.
static DUMMY_HASH: LazyLock<Arc<str>> = LazyLock::new(|| {
    bcrypt::hash("pylon: no such user", bcrypt::DEFAULT_COST)
        .map_or_else(|_| Arc::from(""), Arc::from)
});

/// One user: the bcrypt hash and the consumer it identifies.
pub struct User {
    pub hash: Arc<str>,
    pub consumer: Arc<Consumer>,
}

pub type Users = HashMap<String, User>;

/// Whether `hash` is a bcrypt hash this policy can check.
pub fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
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
        if !is_bcrypt(hash) {
            return Err(format!(
                "{}: user `{user}` does not have a bcrypt hash; only bcrypt is accepted (`htpasswd -B`)",
                at()
            ));
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

pub struct BasicAuth {
    pub challenge: HeaderValue,
    pub forward_credentials: bool,
    users: Arc<Users>,
    /// Outcomes by credential digest: `Some` consumer when the password was right.
    verified: Verified<Option<Arc<Consumer>>>,
    ttl: Duration,
}

impl BasicAuth {
    pub fn new(config: &BasicAuthConfig, users: Arc<Users>) -> BasicAuth {
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        BasicAuth {
            challenge: HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"pylon\"")),
            forward_credentials: config.forward_credentials,
            users,
            verified: Verified::new(CACHE_SIZE),
            ttl: config.cache_ttl.0,
        }
    }

    /// The base64 part of `Authorization: Basic ...`, if the request carries one.
    pub fn credential(req: &pingora::http::RequestHeader) -> Option<&[u8]> {
        let value = req.headers.get(http::header::AUTHORIZATION)?.as_bytes();
        let (scheme, rest) = value.split_at_checked(6)?;
        scheme
            .eq_ignore_ascii_case(b"basic ")
            .then(|| rest.trim_ascii())
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
        let hash = user.map_or_else(|| Arc::clone(&DUMMY_HASH), |u| Arc::clone(&u.hash));
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
        BasicAuth::new(&config, Arc::new(users))
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
        assert!(is_bcrypt(&h));
        assert!(is_bcrypt(&h.replacen("$2b$", "$2y$", 1)));
        assert!(!is_bcrypt("$apr1$abc$def"));
        assert!(!is_bcrypt("{SHA}abc"));
    }
}
