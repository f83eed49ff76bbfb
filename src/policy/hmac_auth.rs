//! `hmac_auth`: requests signed with a consumer's secret, as Kong's and APISIX's hmac-auth sign
//! them (server-to-server calls, webhooks).
//!
//! `Authorization: hmac username="hooks", algorithm="hmac-sha256", headers="date request-line
//! digest", signature="<base64>"` (or the draft-cavage form `Signature keyId="hooks", ...`
//! with `@request-target`). The signing string is one line per listed header, `name: value`,
//! where `request-line` is `GET /path?query HTTP/1.1` and `@request-target` is
//! `get /path?query`. The `date` (or `x-date`) must be signed and within `clock_skew` of now;
//! `enforce_headers` must all be signed; the signature is compared in constant time. With
//! `validate_body`, a signed `digest: SHA-256=<base64>` (or SHA-512) must match the body, read
//! before the request goes upstream. With `replay_protection`, a signature seen within the
//! skew window is refused (per process: a replay to another gateway of a fleet is not seen).
//! HMAC is RustCrypto's `hmac` (its `verify_slice` compares in constant time).

use super::auth::{Auth, Authenticator, Found};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfSize, ConfigError};
use crate::consumer::Consumer;
use crate::error;
use crate::filter::{gather_body, Context, Reply};
use async_trait::async_trait;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use hmac::Hmac as Mac;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const KIND: Kind = Kind {
    name: "hmac_auth",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// The algorithms a signature may use: `hmac-sha256`, `hmac-sha384`, `hmac-sha512`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// How far the signed `date` may be from now, either way.
    #[serde(default = "default_skew")]
    pub clock_skew: ConfDuration,
    /// Headers every signature must cover (`request-line` or `@request-target` included).
    #[serde(default)]
    pub enforce_headers: Vec<String>,
    /// The body must match the signed `digest` header.
    #[serde(default)]
    pub validate_body: bool,
    /// The largest body `validate_body` reads; a larger one is refused.
    #[serde(default = "default_max_body")]
    pub max_body: ConfSize,
    /// A signature already seen within the skew window is refused.
    #[serde(default)]
    pub replay_protection: bool,
    /// Send the `Authorization` header upstream too (it is stripped by default).
    #[serde(default)]
    pub forward_credentials: bool,
    /// Consumer for requests without a signature.
    pub anonymous: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["hmac-sha256".into(), "hmac-sha512".into()]
}
fn default_skew() -> ConfDuration {
    ConfDuration(Duration::from_secs(300))
}
fn default_max_body() -> ConfSize {
    ConfSize(1 << 20)
}

/// The hash an `algorithm` names.
#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

fn digest_of(algorithm: &str) -> Option<Hash> {
    match algorithm {
        "hmac-sha256" => Some(Hash::Sha256),
        "hmac-sha384" => Some(Hash::Sha384),
        "hmac-sha512" => Some(Hash::Sha512),
        _ => None,
    }
}

/// Whether `signature` is the HMAC of `text` under `secret`, compared in constant time.
fn verify_mac(hash: Hash, secret: &[u8], text: &[u8], signature: &[u8]) -> bool {
    fn check<M: hmac::Mac + hmac::digest::KeyInit>(secret: &[u8], text: &[u8], sig: &[u8]) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else {
            return false;
        };
        mac.update(text);
        mac.verify_slice(sig).is_ok()
    }
    match hash {
        Hash::Sha256 => check::<Mac<Sha256>>(secret, text, signature),
        Hash::Sha384 => check::<Mac<Sha384>>(secret, text, signature),
        Hash::Sha512 => check::<Mac<Sha512>>(secret, text, signature),
    }
}

struct HmacSpec {
    config: HmacConfig,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: HmacConfig = src.settings()?;
    let mut errors = Vec::new();
    src.check_anonymous(&config.anonymous, &mut errors);
    for a in &config.algorithms {
        if digest_of(a).is_none() {
            errors.push(src.place.error(format!(
                "`algorithms`: `{a}` is not one of hmac-sha256, hmac-sha384, hmac-sha512"
            )));
        }
    }
    if config.algorithms.is_empty() {
        errors.push(src.place.error("`algorithms` needs at least one"));
    }
    if config.validate_body && !config.enforce_headers.iter().any(|h| h == "digest") {
        errors.push(src.place.error(
            "`validate_body` needs `digest` in `enforce_headers`: the digest must be signed",
        ));
    }
    match errors.is_empty() {
        true => Ok(Arc::new(HmacSpec { config })),
        false => Err(errors),
    }
}

impl Spec for HmacSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let mut secrets = HashMap::new();
        for (name, consumer) in &cx.config.consumers {
            if let Some(secret) = &consumer.hmac_secret {
                let key = Secret::from(secret.get_ref().expose().as_bytes());
                secrets.insert(name.clone(), (cx.consumer(name)?, key));
            }
        }
        let c = &self.config;
        let skew = c.clock_skew.0;
        let seen = cx
            .keeper
            .keep_default::<_, Seen>("hmac_auth", cx.name, skew.as_secs());
        Ok(Compiled::Auth(Arc::new(Hmac {
            name: cx.name.into(),
            algorithms: c.algorithms.clone(),
            skew,
            enforce: c
                .enforce_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            validate_body: c.validate_body,
            max_body: c.max_body.bytes(),
            replay: c.replay_protection.then_some(seen),
            forward_credentials: c.forward_credentials,
            secrets,
            anonymous: cx.anonymous(&c.anonymous)?,
        })))
    }
}

/// Signatures seen within the skew window (replay protection), kept across reloads; sharded
/// by the signature's digest so that requests do not queue on one lock.
pub struct Seen(Box<[Mutex<Expiries>]>);

/// Signature digests and until when each is remembered.
type Expiries = HashMap<[u8; 32], SystemTime>;

impl Default for Seen {
    fn default() -> Seen {
        Seen((0..16).map(|_| Mutex::default()).collect())
    }
}

impl Seen {
    /// Record a signature good until `until`: false when it was already there.
    fn first(&self, signature: &[u8], until: SystemTime) -> bool {
        let key: [u8; 32] = Sha256::digest(signature).into();
        let shard = &self.0[usize::from(key[0]) % self.0.len()];
        let mut seen = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        if seen.len() > 4096 {
            seen.retain(|_, t| *t > now);
        }
        match seen.get(&key) {
            Some(t) if *t > now => false,
            _ => {
                seen.insert(key, until);
                true
            }
        }
    }
}

pub struct Hmac {
    name: Arc<str>,
    algorithms: Vec<String>,
    skew: Duration,
    enforce: Vec<String>,
    validate_body: bool,
    max_body: usize,
    replay: Option<Arc<Seen>>,
    forward_credentials: bool,
    secrets: HashMap<String, (Arc<Consumer>, Secret)>,
    anonymous: Option<Arc<Consumer>>,
}

/// The parts of an `Authorization: hmac ...` or `Signature ...` credential.
#[derive(Debug, Default, PartialEq)]
struct Credential {
    user: String,
    algorithm: String,
    headers: Vec<String>,
    signature: String,
}

fn credential(value: &str) -> Option<Credential> {
    let (scheme, params) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("hmac") && !scheme.eq_ignore_ascii_case("signature") {
        return None;
    }
    let mut c = Credential::default();
    // `name="value"` pairs, comma separated; values carry no quote.
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start().strip_prefix('"')?;
        let (value, after) = after.split_once('"')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "username" | "keyid" => c.user = value.to_string(),
            "algorithm" => c.algorithm = value.to_ascii_lowercase(),
            "headers" => {
                c.headers = value
                    .split_ascii_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect()
            }
            "signature" => c.signature = value.to_string(),
            _ => {}
        }
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Some(c)
}

/// The string a client signs for `headers` of `req`; `None` when one is missing.
fn signing_string(req: &RequestHeader, headers: &[String]) -> Option<String> {
    let target = String::from_utf8_lossy(req.raw_path()).into_owned();
    let version = match req.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2.0",
        _ => "1.1",
    };
    let lines: Option<Vec<String>> = headers
        .iter()
        .map(|name| match name.as_str() {
            "request-line" => Some(format!("{} {target} HTTP/{version}", req.method)),
            "@request-target" => Some(format!(
                "{} {target}",
                req.method.as_str().to_ascii_lowercase()
            )),
            _ => {
                let value = req.headers.get(name.as_str())?.to_str().ok()?;
                Some(format!("{name}: {value}"))
            }
        })
        .collect();
    Some(lines?.join("\n"))
}

/// An HMAC secret's bytes, out of `Debug` and logs.
struct Secret(Box<[u8]>);

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Secret {
        Secret(bytes.into())
    }
}

/// The body digest `digest` (`SHA-256=<base64>` or `SHA-512=<base64>`) asks for, to check.
struct BodyDigest {
    algorithm: Hash,
    expected: Vec<u8>,
    body: BytesMut,
}

impl Hmac {
    fn verify(
        &self,
        req: &RequestHeader,
    ) -> Result<(Arc<Consumer>, Option<BodyDigest>), &'static str> {
        let value = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("invalid_credentials")?;
        let c = credential(value).ok_or("invalid_credentials")?;
        if !self.algorithms.contains(&c.algorithm) {
            return Err("algorithm_not_allowed");
        }
        let digest = digest_of(&c.algorithm).ok_or("algorithm_not_allowed")?;
        let (consumer, key) = self.secrets.get(&c.user).ok_or("invalid_credentials")?;
        let date_header = ["date", "x-date"]
            .into_iter()
            .find(|h| c.headers.iter().any(|s| s == h))
            .ok_or("date_not_signed")?;
        if self.enforce.iter().any(|h| !c.headers.contains(h)) {
            return Err("header_not_signed");
        }
        let date = req
            .headers
            .get(date_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .ok_or("invalid_date")?;
        let now = SystemTime::now();
        let off = now
            .duration_since(date)
            .or_else(|_| date.duration_since(now))
            .unwrap_or_default();
        if off > self.skew {
            return Err("clock_skew");
        }
        let text = signing_string(req, &c.headers).ok_or("signed_header_missing")?;
        let presented = base64::engine::general_purpose::STANDARD
            .decode(&c.signature)
            .map_err(|_| "invalid_signature")?;
        if !verify_mac(digest, &key.0, text.as_bytes(), &presented) {
            return Err("invalid_signature");
        }
        if let Some(seen) = &self.replay {
            if !seen.first(&presented, now + self.skew) {
                return Err("replayed");
            }
        }
        let body = match self.validate_body {
            false => None,
            true => Some(body_digest(req).ok_or("invalid_digest")?),
        };
        Ok((Arc::clone(consumer), body))
    }
}

fn body_digest(req: &RequestHeader) -> Option<BodyDigest> {
    let value = req.headers.get("digest")?.to_str().ok()?;
    let (name, encoded) = value.trim().split_once('=')?;
    let algorithm = match name.to_ascii_uppercase().as_str() {
        "SHA-256" => Hash::Sha256,
        "SHA-512" => Hash::Sha512,
        _ => return None,
    };
    let expected = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    Some(BodyDigest {
        algorithm,
        expected,
        body: BytesMut::new(),
    })
}

#[async_trait]
impl Authenticator for Hmac {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
        cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)> {
        let value = req
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        credential(value)?;
        let found =
            (!self.forward_credentials).then_some(Found::Header(http::header::AUTHORIZATION));
        let auth = match self.verify(req) {
            Ok((consumer, body)) => {
                if let Some(body) = body {
                    cx.state.insert(body);
                }
                Auth::consumer(consumer)
            }
            Err(reason) => Auth::Refused(reason),
        };
        Some((auth, found))
    }

    fn challenge(&self, _reason: &str) -> HeaderValue {
        HeaderValue::from_static("hmac algorithm=\"hmac-sha256\", headers=\"date request-line\"")
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }

    fn holds_body(&self) -> usize {
        match self.validate_body {
            true => self.max_body + 1,
            false => 0,
        }
    }

    async fn request_body(
        &self,
        body: &Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(digest) = cx.state.get_mut::<BodyDigest>() else {
            return Ok(());
        };
        gather_body(&mut digest.body, body, self.max_body)?;
        if !end {
            return Ok(());
        }
        let Some(digest) = cx.state.remove::<BodyDigest>() else {
            return Ok(());
        };
        let actual = match digest.algorithm {
            Hash::Sha512 => Sha512::digest(&digest.body).to_vec(),
            Hash::Sha384 => Sha384::digest(&digest.body).to_vec(),
            Hash::Sha256 => Sha256::digest(&digest.body).to_vec(),
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &actual[..],
            &digest.expected[..],
        )) {
            super::auth::refused(cx, &self.name, "body_digest_mismatch");
            return Err(Reply::error(error::UNAUTHORIZED)
                .with(http::header::WWW_AUTHENTICATE, self.challenge("")));
        }
        Ok(())
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_and_cavage_credentials_parse() {
        let c = credential(
            r#"hmac username="hooks", algorithm="hmac-sha256", headers="date request-line digest", signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(c.user, "hooks");
        assert_eq!(c.algorithm, "hmac-sha256");
        assert_eq!(c.headers, ["date", "request-line", "digest"]);
        assert_eq!(c.signature, "c2ln");
        let c = credential(r#"Signature keyId="k",algorithm="hmac-sha512",headers="@request-target date",signature="x""#)
            .unwrap();
        assert_eq!((c.user.as_str(), c.headers.len()), ("k", 2));
        assert!(credential("Bearer abc").is_none());
    }

    #[test]
    fn the_signing_string_is_a_line_per_signed_header() {
        let mut req = RequestHeader::build("POST", b"/hooks?a=1", None).unwrap();
        req.insert_header("date", "Tue, 01 Dec 2026 10:00:00 GMT")
            .unwrap();
        let names = ["date", "request-line", "@request-target"].map(String::from);
        assert_eq!(
            signing_string(&req, &names).unwrap(),
            "date: Tue, 01 Dec 2026 10:00:00 GMT\nPOST /hooks?a=1 HTTP/1.1\npost /hooks?a=1"
        );
        assert!(signing_string(&req, &["x-missing".to_string()]).is_none());
    }

    #[test]
    fn a_signature_is_seen_once_within_its_window() {
        let seen = Seen::default();
        let until = SystemTime::now() + Duration::from_secs(60);
        assert!(seen.first(b"sig", until));
        assert!(!seen.first(b"sig", until));
        assert!(seen.first(b"other", until));
    }
}
