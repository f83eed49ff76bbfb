//! `jwt`: a bearer token signed by a trusted issuer.
//!
//! Keys come from the policy (`secret` for HS*, PEM `keys`) or a JWKS document
//! ([`super::jwks`]). Each policy names the algorithms it accepts, and a key only ever verifies
//! the algorithm family it belongs to: that is what defeats algorithm confusion (an HS256 token
//! "signed" with an RSA public key) and `alg: none` (not an algorithm to this policy).
//!
//! A verified token is remembered until its `exp`, keyed by its digest, together with what the
//! request needs from it (consumer, claim headers): a repeat request costs one hash lookup, not
//! a signature check. Entries verified with a JWKS key also record the key set's generation, so
//! removing a key from the JWKS revokes the tokens it signed.

use super::jwks::Jwks;
use super::verified::{self, Verified};
use super::{Auth, Consumer, Identity};
use crate::config::JwtConfig;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    pub fn of(alg: Algorithm) -> Family {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Family::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 | ES384 => Family::Ec,
            EdDSA => Family::Ed,
        }
    }
}

/// A public key from PEM text: RSA, EC or Ed25519, whichever it is.
pub fn pem_key(pem: &str) -> Result<(DecodingKey, Family), String> {
    let pem = pem.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, Family::Rsa));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, Family::Ec));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, Family::Ed));
    }
    Err("not a PEM public key (RSA, EC or Ed25519)".into())
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

pub struct Jwt {
    pub challenge: HeaderValue,
    pub invalid_challenge: HeaderValue,
    pub forward_credentials: bool,
    /// Headers this policy sets from claims; removed from every upstream request of its routes.
    pub claim_headers: Vec<(String, HeaderName)>,
    algorithms: HashMap<Algorithm, Validation>,
    secret: Option<DecodingKey>,
    keys: Vec<(DecodingKey, Family)>,
    jwks: Option<Arc<Jwks>>,
    required_claims: Vec<String>,
    required_scopes: Vec<String>,
    required_roles: Vec<String>,
    roles_claim: Vec<String>,
    consumer_claim: Option<String>,
    subjects: Arc<HashMap<String, Arc<Consumer>>>,
    leeway: u64,
    max_token_bytes: usize,
    verified: Verified<Grant>,
}

impl Jwt {
    pub fn new(
        config: &JwtConfig,
        subjects: Arc<HashMap<String, Arc<Consumer>>>,
        jwks: Option<Arc<Jwks>>,
    ) -> Result<Jwt, String> {
        let leeway = config.leeway.map_or(0, |l| l.0.as_secs());
        let mut required: HashSet<String> = HashSet::from(["exp".to_string()]);
        required.extend(
            config
                .required_claims
                .iter()
                .filter(|c| ["iss", "aud", "sub", "nbf"].contains(&c.as_str()))
                .cloned(),
        );
        let mut algorithms = HashMap::new();
        for name in &config.algorithms {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("unknown JWT algorithm {name:?}"))?;
            let mut v = Validation::new(alg);
            v.leeway = leeway;
            v.validate_nbf = true;
            v.required_spec_claims = required.clone();
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                v.required_spec_claims.insert("iss".into());
            }
            if config.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&config.audience);
                v.required_spec_claims.insert("aud".into());
            }
            algorithms.insert(alg, v);
        }
        let keys = config
            .keys
            .iter()
            .map(|k| pem_key(k.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        let realm = &config.realm;
        let header = |s: String| HeaderValue::from_str(&s).map_err(|e| e.to_string());
        Ok(Jwt {
            challenge: header(format!("Bearer realm=\"{realm}\""))?,
            invalid_challenge: header(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\""
            ))?,
            forward_credentials: config.forward_credentials,
            claim_headers: config
                .claims_to_headers
                .iter()
                .map(|(claim, h)| Ok((claim.clone(), HeaderName::try_from(h.as_str())?)))
                .collect::<Result<_, http::header::InvalidHeaderName>>()
                .map_err(|e| e.to_string())?,
            algorithms,
            secret: config
                .secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            keys,
            jwks,
            required_claims: config.required_claims.clone(),
            required_scopes: config.required_scopes.clone(),
            required_roles: config.required_roles.clone(),
            roles_claim: config.roles_claim.split('.').map(String::from).collect(),
            consumer_claim: config.consumer_claim.clone(),
            subjects,
            leeway,
            max_token_bytes: config.max_token_bytes,
            verified: Verified::new(config.cache_size),
        })
    }

    /// The token of `Authorization: Bearer ...`, if the request carries one.
    pub fn credential(req: &pingora::http::RequestHeader) -> Option<&[u8]> {
        super::authorization(req, b"bearer ")
    }

    pub async fn authenticate(&self, token: &[u8]) -> Auth {
        if token.len() > self.max_token_bytes {
            return Auth::Refused("token_too_large");
        }
        let Ok(token) = std::str::from_utf8(token) else {
            return Auth::Refused("invalid_token");
        };
        let digest = verified::digest(&[token.as_bytes()]);
        if let Some(grant) = self.verified.get(&digest) {
            let current = self.jwks.as_ref().map(|j| j.keys().generation);
            if grant.generation.is_none() || grant.generation == current {
                return Auth::Granted(grant.identity);
            }
        }
        match self.verify(token).await {
            Ok((grant, exp)) => {
                let now = unix_now();
                let ttl = exp.saturating_add(self.leeway).saturating_sub(now);
                if ttl > 0 {
                    self.verified
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
        let Some(validation) = self.algorithms.get(&header.alg) else {
            return Err(Unauthorized("algorithm_not_allowed"));
        };
        let family = Family::of(header.alg);
        let mut candidates: Vec<&DecodingKey> = Vec::new();
        let mut generation = None;
        let jwks_key;
        let jwks_set;
        match (&self.jwks, &header.kid) {
            _ if family == Family::Hmac => candidates.extend(&self.secret),
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
                candidates.extend(self.keys.iter().filter(|k| k.1 == family).map(|k| &k.0));
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
            .required_claims
            .iter()
            .any(|c| claims.get(c).is_none_or(Value::is_null))
        {
            return Err(Unauthorized("missing_claim"));
        }
        if !self.required_scopes.is_empty() {
            let granted = scopes(&claims);
            if !self.required_scopes.iter().all(|s| granted.contains(s)) {
                return Err(Forbidden("insufficient_scope"));
            }
        }
        if !self.required_roles.is_empty() {
            let granted = strings(lookup(&claims, &self.roles_claim));
            if !self.required_roles.iter().any(|r| granted.contains(r)) {
                return Err(Forbidden("missing_role"));
            }
        }
        let consumer = match &self.consumer_claim {
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Scopes granted: `scope` (space-separated, OAuth 2) and `scp` (an array or a string).
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(String::from)),
            Some(v) => out.extend(strings(Some(v))),
            None => {}
        }
    }
    out
}

/// A claim at a dotted path (`realm_access.roles`).
fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |v, key| v.get(key))
}

/// The strings of a claim that is a string or an array of strings.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// A claim as an upstream header value: strings as they are, numbers and booleans printed,
/// arrays of those joined with commas. Objects, and values a header cannot carry, are skipped.
fn header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
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
        Jwt::new(&config, Arc::new(subjects), None).unwrap()
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
        let Auth::Granted(id) = p.authenticate(&t).await else {
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
            p.authenticate(&stranger).await,
            Auth::Refused("unknown_consumer")
        ));
    }

    #[tokio::test]
    async fn refuses_bad_tokens() {
        let p = policy("");
        let wrong = token(json!({"exp": exp()}), Algorithm::HS256, "other");
        assert!(matches!(
            p.authenticate(&wrong).await,
            Auth::Refused("bad_signature")
        ));
        let hs384 = token(json!({"exp": exp()}), Algorithm::HS384, "s3cret");
        assert!(matches!(
            p.authenticate(&hs384).await,
            Auth::Refused("algorithm_not_allowed")
        ));
        let no_exp = token(json!({"sub": "x"}), Algorithm::HS256, "s3cret");
        assert!(matches!(
            p.authenticate(&no_exp).await,
            Auth::Refused("missing_claim")
        ));
        assert!(matches!(
            p.authenticate(b"a.b.c").await,
            Auth::Refused("invalid_token")
        ));
        assert!(matches!(
            p.authenticate(&[b'a'; 9000]).await,
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
        assert!(matches!(p.authenticate(&ok).await, Auth::Granted(_)));
        let scp = token(
            json!({"exp": exp(), "scp": ["orders:read"], "realm": {"roles": "admin"}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(p.authenticate(&scp).await, Auth::Granted(_)));
        let no_scope = token(
            json!({"exp": exp(), "scope": "orders:write", "realm": {"roles": ["ops"]}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(
            p.authenticate(&no_scope).await,
            Auth::Forbidden("insufficient_scope")
        ));
        let no_role = token(
            json!({"exp": exp(), "scope": "orders:read", "realm": {"roles": ["user"]}}),
            Algorithm::HS256,
            "s3cret",
        );
        assert!(matches!(
            p.authenticate(&no_role).await,
            Auth::Forbidden("missing_role")
        ));
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
