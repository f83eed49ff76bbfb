//! `jwt`: a bearer token signed by a trusted issuer.
//!
//! Keys come from the policy (`secret` for HS*, PEM `keys`) or a JWKS document
//! ([`jwks`]). Each policy names the algorithms it accepts, and a key only ever verifies
//! the algorithm family it belongs to: that is what defeats algorithm confusion (an HS256 token
//! "signed" with an RSA public key) and `alg: none` (not an algorithm to this policy).
//!
//! A verified token is remembered until its `exp`, keyed by its digest, together with what the
//! request needs from it (consumer, claim headers): a repeat request costs one hash lookup, not
//! a signature check. Entries verified with a JWKS key also record the key set's generation, so
//! removing a key from the JWKS revokes the tokens it signed.

pub mod claims;
pub mod jwks;
mod keys;
mod settings;

use self::claims::{header_value, lookup, scopes, strings};
use self::jwks::Jwks;
use self::keys::validations;
pub use self::keys::{pem_key, Family};
pub use self::settings::JwtConfig;
use super::auth::{self, Auth, Authenticator, Found};
use super::verified::{self, Verified};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::consumer::{Consumer, Identity};
use crate::filter::Context;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const KIND: Kind = Kind { name: "jwt", parse };

/// A jwt policy's settings, checked, with its keys and validations built.
struct JwtSpec {
    config: JwtConfig,
    prepared: Arc<Prepared>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: JwtConfig = src.settings()?;
    let mut errors = Vec::new();
    src.check_anonymous(&config.anonymous, &mut errors);
    match prepare(&config) {
        Ok(prepared) if errors.is_empty() => Ok(Arc::new(JwtSpec {
            config,
            prepared: Arc::new(prepared),
        })),
        Ok(_) => Err(errors),
        Err(messages) => {
            errors.extend(messages.into_iter().map(|m| src.place.error(m)));
            Err(errors)
        }
    }
}

/// Check a policy's settings and build what they decide; every problem found.
fn prepare(config: &JwtConfig) -> Result<Prepared, Vec<String>> {
    let mut errors = Vec::new();
    let mut err = |m: String| errors.push(m);
    if config.algorithms.is_empty() {
        err("`algorithms` must name at least one algorithm".into());
    }
    let mut hmac = false;
    let mut public = false;
    for alg in &config.algorithms {
        match alg.parse::<Algorithm>() {
            Ok(a) if Family::of(a) == Family::Hmac => hmac = true,
            Ok(_) => public = true,
            Err(_) => err(format!(
                "unknown algorithm {alg:?}; expected HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
            )),
        }
    }
    if hmac && config.secret.is_none() {
        err("HS* algorithms need a `secret`".into());
    }
    if !hmac && config.secret.is_some() {
        err("`secret` is set but no HS* algorithm is accepted".into());
    }
    if public && config.keys.is_empty() && config.jwks_url.is_none() {
        err("RS/PS/ES/EdDSA algorithms need `keys` or a `jwks_url`".into());
    }
    let mut keys = Vec::new();
    for key in &config.keys {
        match pem_key(key.expose()) {
            Ok(k) => keys.push(k),
            Err(e) => err(format!("a key in `keys` is {e}")),
        }
    }
    if let Some(url) = &config.jwks_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            err(format!(
                "`jwks_url` {url:?} must be an http:// or https:// URL"
            ));
        }
    }
    if config.max_token_bytes == 0 {
        err("`max_token_bytes` must be above zero".into());
    }
    let mut claim_headers = Vec::new();
    for (claim, header) in &config.claims_to_headers {
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) => claim_headers.push((claim.clone(), h)),
            Err(_) => err(format!(
                "invalid header name {header:?} in `claims_to_headers`"
            )),
        }
    }
    let realm = &config.realm;
    let challenge = HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""));
    let invalid_challenge = HeaderValue::from_str(&format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\""
    ));
    let (Ok(challenge), Ok(invalid_challenge)) = (challenge, invalid_challenge) else {
        err(format!("`realm` {realm:?} cannot go in a header"));
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Prepared {
        challenge,
        invalid_challenge,
        forward_credentials: config.forward_credentials,
        owned: claim_headers.iter().map(|(_, h)| h.clone()).collect(),
        claim_headers,
        algorithms: validations(config),
        secret: config
            .secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
        keys,
        required_claims: config.required_claims.clone(),
        required_scopes: config.required_scopes.clone(),
        required_roles: config.required_roles.clone(),
        roles_claim: config.roles_claim.split('.').map(String::from).collect(),
        consumer_claim: config.consumer_claim.clone(),
        leeway: config.leeway.map_or(0, |l| l.0.as_secs()),
        max_token_bytes: config.max_token_bytes,
    })
}

/// Consumers by `jwt_subject`.
type Subjects = HashMap<String, Arc<Consumer>>;

/// What decides whether remembered tokens still hold after a reload: the policy's settings
/// and the consumers its tokens map to.
#[derive(PartialEq)]
struct CacheKey {
    config: JwtConfig,
    subjects: Vec<(String, Arc<str>, Box<[String]>)>,
}

/// The cache of verified tokens, kept across reloads while its [`CacheKey`] is unchanged.
struct Tokens(Verified<Grant>);

impl Spec for JwtSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let c = &self.config;
        let jwks = match &c.jwks_url {
            None => None,
            Some(url) => {
                let (refresh, min_refresh) = (c.jwks_refresh.0, c.jwks_min_refresh.0);
                // One set per URL and intervals, shared by the policies that name it.
                Some(cx.keeper.keep("jwks", url, (refresh, min_refresh), || {
                    Jwks::new(url, refresh, min_refresh)
                })?)
            }
        };
        let mut subjects = Subjects::new();
        for (name, consumer) in &cx.config.consumers {
            if let Some(subject) = &consumer.jwt_subject {
                subjects.insert(subject.get_ref().clone(), cx.consumer(name)?);
            }
        }
        let mut described: Vec<_> = subjects
            .iter()
            .map(|(s, c)| (s.clone(), Arc::clone(&c.name), c.groups.clone()))
            .collect();
        described.sort();
        let key = CacheKey {
            config: c.clone(),
            subjects: described,
        };
        let size = c.cache_size;
        let verified = cx.keeper.keep("jwt", cx.name, key, || {
            Ok::<_, String>(Tokens(Verified::new(size)))
        })?;
        let anonymous = cx.anonymous(&c.anonymous)?;
        Ok(Compiled::Auth(Arc::new(Jwt {
            name: cx.name.into(),
            p: Arc::clone(&self.prepared),
            jwks,
            subjects,
            verified,
            anonymous,
        })))
    }
}

/// What a verified token grants, remembered until it expires.
#[derive(Clone)]
struct Grant {
    identity: Identity,
    /// The JWKS generation the signing key came from, when it came from a JWKS.
    generation: Option<u64>,
}

/// Why a token was refused, and whether that is a 401 or a 403.
enum Refusal {
    Unauthorized(&'static str),
    Forbidden(&'static str),
}

/// Everything of a policy that its settings alone decide, built at parse.
struct Prepared {
    challenge: HeaderValue,
    invalid_challenge: HeaderValue,
    forward_credentials: bool,
    /// Headers this policy sets from claims; removed from every upstream request of its routes.
    claim_headers: Vec<(String, HeaderName)>,
    owned: Box<[HeaderName]>,
    algorithms: HashMap<Algorithm, Validation>,
    secret: Option<DecodingKey>,
    keys: Vec<(DecodingKey, Family)>,
    required_claims: Vec<String>,
    required_scopes: Vec<String>,
    required_roles: Vec<String>,
    roles_claim: Vec<String>,
    consumer_claim: Option<String>,
    leeway: u64,
    max_token_bytes: usize,
}

pub struct Jwt {
    name: Arc<str>,
    p: Arc<Prepared>,
    jwks: Option<Arc<Jwks>>,
    subjects: Subjects,
    verified: Arc<Tokens>,
    anonymous: Option<Arc<Consumer>>,
}

impl Jwt {
    /// The token of `Authorization: Bearer ...`, if the request carries one.
    pub fn credential(req: &RequestHeader) -> Option<&[u8]> {
        auth::authorization(req, b"bearer ")
    }

    pub async fn check(&self, token: &[u8]) -> Auth {
        if token.len() > self.p.max_token_bytes {
            return Auth::Refused("token_too_large");
        }
        let Ok(token) = std::str::from_utf8(token) else {
            return Auth::Refused("invalid_token");
        };
        let digest = verified::digest(&[token.as_bytes()]);
        if let Some(grant) = self.verified.0.get(&digest) {
            let current = self.jwks.as_ref().map(|j| j.keys().generation);
            if grant.generation.is_none() || grant.generation == current {
                return Auth::Granted(grant.identity);
            }
        }
        match self.verify(token).await {
            Ok((grant, exp)) => {
                let now = unix_now();
                let ttl = exp.saturating_add(self.p.leeway).saturating_sub(now);
                if ttl > 0 {
                    self.verified
                        .0
                        .put(digest, grant.clone(), Duration::from_secs(ttl));
                }
                Auth::Granted(grant.identity)
            }
            Err(Refusal::Unauthorized(reason)) => Auth::Refused(reason),
            Err(Refusal::Forbidden(reason)) => Auth::Forbidden(reason),
        }
    }

    /// The full check: header, key, signature, claims, scopes, consumer. Returns the grant and
    /// the token's `exp`.
    async fn verify(&self, token: &str) -> Result<(Grant, u64), Refusal> {
        use Refusal::*;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Unauthorized("invalid_token"))?;
        let Some(validation) = self.p.algorithms.get(&header.alg) else {
            return Err(Unauthorized("algorithm_not_allowed"));
        };
        let family = Family::of(header.alg);
        let mut candidates: Vec<&DecodingKey> = Vec::new();
        let mut generation = None;
        let jwks_key;
        let jwks_set;
        match (&self.jwks, &header.kid) {
            _ if family == Family::Hmac => candidates.extend(&self.p.secret),
            (Some(jwks), Some(kid)) => {
                let (key, set) = jwks.key(kid).await.ok_or(Unauthorized("unknown_kid"))?;
                jwks_key = key;
                if jwks_key.family != family || jwks_key.alg.is_some_and(|a| a != header.alg) {
                    return Err(Unauthorized("algorithm_not_allowed"));
                }
                generation = Some(set);
                candidates.push(&jwks_key.key);
            }
            (jwks, _) => {
                candidates.extend(self.p.keys.iter().filter(|k| k.1 == family).map(|k| &k.0));
                if let Some(jwks) = jwks {
                    jwks_set = jwks.keys();
                    generation = Some(jwks_set.generation);
                    candidates.extend(
                        jwks_set
                            .all
                            .iter()
                            .filter(|k| k.family == family)
                            .map(|k| &k.key),
                    );
                }
            }
        }
        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    ErrorKind::ExpiredSignature => return Err(Unauthorized("expired")),
                    ErrorKind::ImmatureSignature => return Err(Unauthorized("not_yet_valid")),
                    ErrorKind::InvalidIssuer => return Err(Unauthorized("wrong_issuer")),
                    ErrorKind::InvalidAudience => return Err(Unauthorized("wrong_audience")),
                    ErrorKind::MissingRequiredClaim(_) => {
                        return Err(Unauthorized("missing_claim"))
                    }
                    ErrorKind::InvalidSignature => {}
                    _ => return Err(Unauthorized("invalid_token")),
                },
            }
        }
        let claims = claims.ok_or(Unauthorized("bad_signature"))?;
        if self
            .p
            .required_claims
            .iter()
            .any(|c| claims.get(c).is_none_or(Value::is_null))
        {
            return Err(Unauthorized("missing_claim"));
        }
        if !self.p.required_scopes.is_empty() {
            let granted = scopes(&claims);
            if !self.p.required_scopes.iter().all(|s| granted.contains(s)) {
                return Err(Forbidden("insufficient_scope"));
            }
        }
        if !self.p.required_roles.is_empty() {
            let granted = strings(lookup(&claims, &self.p.roles_claim));
            if !self.p.required_roles.iter().any(|r| granted.contains(r)) {
                return Err(Forbidden("missing_role"));
            }
        }
        let consumer = match &self.p.consumer_claim {
            None => None,
            Some(claim) => {
                let subject = claims.get(claim).and_then(Value::as_str);
                let consumer = subject.and_then(|s| self.subjects.get(s));
                Some(Arc::clone(
                    consumer.ok_or(Unauthorized("unknown_consumer"))?,
                ))
            }
        };
        let headers: Vec<_> = self
            .p
            .claim_headers
            .iter()
            .filter_map(|(claim, name)| {
                let value = header_value(claims.get(claim)?)?;
                Some((name.clone(), value))
            })
            .collect();
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let identity = Identity {
            consumer,
            claims: (!headers.is_empty()).then(|| headers.into()),
            jwt: Some(Arc::new(claims)),
            ..Identity::default()
        };
        Ok((
            Grant {
                identity,
                generation,
            },
            exp,
        ))
    }
}

#[async_trait]
impl Authenticator for Jwt {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
        _cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)> {
        let token = Jwt::credential(req)?;
        let found =
            (!self.p.forward_credentials).then_some(Found::Header(http::header::AUTHORIZATION));
        Some((self.check(token).await, found))
    }

    fn challenge(&self, reason: &str) -> HeaderValue {
        match reason {
            "missing_credentials" => self.p.challenge.clone(),
            _ => self.p.invalid_challenge.clone(),
        }
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &self.p.owned
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn policy(extra: &str) -> Jwt {
        let config: JwtConfig = toml::from_str(&format!(
            "algorithms = [\"HS256\"]\nsecret = \"s3cret\"\n{extra}"
        ))
        .unwrap();
        let subjects = HashMap::from([(
            "alice@example.com".to_string(),
            Arc::new(Consumer::new("alice", vec![])),
        )]);
        Jwt {
            name: "j".into(),
            p: Arc::new(prepare(&config).unwrap()),
            jwks: None,
            subjects,
            verified: Arc::new(Tokens(Verified::new(100))),
            anonymous: None,
        }
    }

    fn token(claims: Value, alg: Algorithm, secret: &str) -> Vec<u8> {
        let key = EncodingKey::from_secret(secret.as_bytes());
        encode(&Header::new(alg), &claims, &key)
            .unwrap()
            .into_bytes()
    }

    fn exp() -> u64 {
        unix_now() + 600
    }

    #[tokio::test]
    async fn verifies_and_maps() {
        let p = policy(
            "consumer_claim = \"sub\"\nclaims_to_headers = { sub = \"x-user\", n = \"x-n\" }",
        );
        let t = token(
            json!({"sub": "alice@example.com", "exp": exp(), "n": 7}),
            Algorithm::HS256,
            "s3cret",
        );
        let Auth::Granted(id) = p.check(&t).await else {
            panic!("refused")
        };
        assert_eq!(&*id.consumer.unwrap().name, "alice");
        let claims = id.claims.unwrap();
        assert_eq!(claims[0].1, "7");
        assert_eq!(claims[1].1, "alice@example.com");
        let stranger = token(
            json!({"sub": "eve", "exp": exp()}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(
            p.check(&stranger).await,
            Auth::Refused("unknown_consumer")
        ));
    }

    #[tokio::test]
    async fn refuses_bad_tokens() {
        let p = policy("");
        let wrong = token(json!({"exp": exp()}), Algorithm::HS256, "other");
        assert!(matches!(
            p.check(&wrong).await,
            Auth::Refused("bad_signature")
        ));
        let hs384 = token(json!({"exp": exp()}), Algorithm::HS384, "s3cret");
        assert!(matches!(
            p.check(&hs384).await,
            Auth::Refused("algorithm_not_allowed")
        ));
        let no_exp = token(json!({"sub": "x"}), Algorithm::HS256, "s3cret");
        assert!(matches!(
            p.check(&no_exp).await,
            Auth::Refused("missing_claim")
        ));
        assert!(matches!(
            p.check(b"a.b.c").await,
            Auth::Refused("invalid_token")
        ));
        assert!(matches!(
            p.check(&[b'a'; 9000]).await,
            Auth::Refused("token_too_large")
        ));
    }

    #[tokio::test]
    async fn scopes_and_roles() {
        let p = policy(
            "required_scopes = [\"orders:read\"]\nrequired_roles = [\"admin\", \"ops\"]\nroles_claim = \"realm.roles\"",
        );
        let ok = token(
            json!({"exp": exp(), "scope": "a orders:read", "realm": {"roles": ["ops"]}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(p.check(&ok).await, Auth::Granted(_)));
        let scp = token(
            json!({"exp": exp(), "scp": ["orders:read"], "realm": {"roles": "admin"}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(p.check(&scp).await, Auth::Granted(_)));
        let no_scope = token(
            json!({"exp": exp(), "scope": "orders:write", "realm": {"roles": ["ops"]}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(
            p.check(&no_scope).await,
            Auth::Forbidden("insufficient_scope")
        ));
        let no_role = token(
            json!({"exp": exp(), "scope": "orders:read", "realm": {"roles": ["user"]}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(
            p.check(&no_role).await,
            Auth::Forbidden("missing_role")
        ));
    }

    #[test]
    fn verified_tokens_survive_a_reload_that_keeps_the_policy() {
        use crate::state::{Carried, Keeper};
        // One configuration's compile, keeping what the previous one carried, as a snapshot's.
        let compile = |secret: &str, cache: usize, previous: Option<&Carried>| {
            let config: JwtConfig = toml::from_str(&format!(
                "algorithms = [\"HS256\"]\nsecret = \"{secret}\"\ncache_size = {cache}\n"
            ))
            .unwrap();
            let spec = JwtSpec {
                prepared: Arc::new(prepare(&config).unwrap()),
                config,
            };
            let file = crate::config::Config::default();
            let mut keeper = Keeper::new(previous);
            let mut cx = Compile {
                name: "j",
                config: &file,
                consumers: &crate::consumer::Consumers::compile(&file),
                upstreams: &Default::default(),
                keeper: &mut keeper,
            };
            assert!(spec.compile(&mut cx).is_ok());
            keeper.finish()
        };
        let tokens = |c: &Carried| c.all::<Tokens>().next().unwrap();
        let first = compile("a", 10, None);
        let same = compile("a", 10, Some(&first));
        assert!(Arc::ptr_eq(&tokens(&first), &tokens(&same)));
        // A new secret: what the old one verified no longer holds.
        let rekeyed = compile("b", 10, Some(&same));
        assert!(!Arc::ptr_eq(&tokens(&same), &tokens(&rekeyed)));
        let resized = compile("b", 20, Some(&rekeyed));
        assert!(!Arc::ptr_eq(&tokens(&rekeyed), &tokens(&resized)));
    }

    #[test]
    fn bearer_credential() {
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", "bearer abc.def.ghi")
            .unwrap();
        assert_eq!(Jwt::credential(&req), Some(&b"abc.def.ghi"[..]));
        req.insert_header("authorization", "Basic abc").unwrap();
        assert_eq!(Jwt::credential(&req), None);
    }
}
