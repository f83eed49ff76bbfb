//! `upstream_jwt`: after authentication, the gateway states who the caller is in a short-lived
//! JWT it signs, so the services behind it can verify the caller instead of trusting a plain
//! `x-consumer` that anyone reaching them directly could send.
//!
//! The token (ES256 or RS256, the key from a PEM file or secret, `kid` given or the key's RFC
//! 7638 thumbprint) carries `iss`, `iat`, `exp` (`ttl` on), `sub` (the consumer), `groups`, and
//! the chosen `claims` of the request's verified JWT; it goes upstream in `header`, whose
//! client-sent value is always removed. A request with no consumer gets no token. Tokens are
//! signed once per consumer and claims and reused for half their life, so a busy consumer costs
//! one signature every `ttl / 2`. The public keys are served as a JWKS by the admin API
//! (`GET /jwks`) and, with `jwks_path`, on the routes the policy is on (before authentication).

use super::verified::{self, Verified};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfigError, Secret};
use crate::filter::{Body, Context, Filter, Phases, Reply, Stage};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::pkey::{Id, PKey, Private};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const KIND: Kind = Kind {
    name: "upstream_jwt",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamJwtConfig {
    /// The private key, PEM (`file:/path`, `env:NAME` or inline).
    pub key: Secret,
    /// `ES256` (a P-256 key) or `RS256` (an RSA key).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// The key's id in tokens and the JWKS; default its RFC 7638 thumbprint.
    pub kid: Option<String>,
    /// The request header the token goes upstream in.
    #[serde(default = "default_header")]
    pub header: String,
    #[serde(default = "default_ttl")]
    pub ttl: ConfDuration,
    /// `iss` of the tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// `aud` of the tokens, if any.
    pub audience: Option<String>,
    /// Claims carried: `sub` (the consumer), `groups`, and any claim of the request's
    /// verified JWT.
    #[serde(default = "default_claims")]
    pub claims: Vec<String>,
    /// A path on the policy's routes answered with the JWKS, before authentication.
    pub jwks_path: Option<String>,
}

fn default_algorithm() -> String {
    "ES256".into()
}
fn default_header() -> String {
    "x-pylon-identity".into()
}
fn default_ttl() -> ConfDuration {
    ConfDuration(Duration::from_secs(60))
}
fn default_issuer() -> String {
    "pylon".into()
}
fn default_claims() -> Vec<String> {
    vec!["sub".into(), "groups".into()]
}

/// A signing key and its public half as a JWK.
pub struct SigningKey {
    encoding: EncodingKey,
    algorithm: Algorithm,
    kid: String,
    pub jwk: Value,
}

impl SigningKey {
    /// A JWT of `claims`, with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> Option<String> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).ok()
    }
}

struct UpstreamJwtSpec {
    config: UpstreamJwtConfig,
    key: Arc<SigningKey>,
    header: HeaderName,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Load a PEM private key for `algorithm`, with its public JWK.
pub fn signing_key(pem: &str, algorithm: &str, kid: Option<&str>) -> Result<SigningKey, String> {
    let key: PKey<Private> =
        PKey::private_key_from_pem(pem.as_bytes()).map_err(|_| "`key` is not a PEM private key")?;
    let pkcs8 = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| format!("`key`: {e}"))?;
    let (algorithm, encoding, mut jwk, thumb) = match (algorithm, key.id()) {
        ("ES256", Id::EC) => {
            let ec = key.ec_key().map_err(|e| e.to_string())?;
            let group = ec.group();
            if group.curve_name() != Some(openssl::nid::Nid::X9_62_PRIME256V1) {
                return Err("`key`: ES256 needs a P-256 key".into());
            }
            let mut ctx = openssl::bn::BigNumContext::new().map_err(|e| e.to_string())?;
            let (mut x, mut y) = (
                openssl::bn::BigNum::new().map_err(|e| e.to_string())?,
                openssl::bn::BigNum::new().map_err(|e| e.to_string())?,
            );
            ec.public_key()
                .affine_coordinates(group, &mut x, &mut y, &mut ctx)
                .map_err(|e| e.to_string())?;
            let (x, y) = (
                b64url(&x.to_vec_padded(32).map_err(|e| e.to_string())?),
                b64url(&y.to_vec_padded(32).map_err(|e| e.to_string())?),
            );
            let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            let encoding = EncodingKey::from_ec_pem(&pkcs8).map_err(|e| e.to_string())?;
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
            (Algorithm::ES256, encoding, jwk, thumb)
        }
        ("RS256", Id::RSA) => {
            let rsa = key.rsa().map_err(|e| e.to_string())?;
            if rsa.size() < 256 {
                return Err("`key`: RS256 needs an RSA key of 2048 bits or more".into());
            }
            let (n, e) = (b64url(&rsa.n().to_vec()), b64url(&rsa.e().to_vec()));
            let thumb = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
            let encoding = EncodingKey::from_rsa_pem(&pkcs8).map_err(|e| e.to_string())?;
            let jwk = json!({"kty": "RSA", "n": n, "e": e});
            (Algorithm::RS256, encoding, jwk, thumb)
        }
        ("ES256" | "RS256", _) => {
            return Err(format!(
                "`key` is not the kind of key {algorithm} signs with"
            ))
        }
        _ => return Err("`algorithm` is ES256 or RS256".into()),
    };
    let kid = kid.map_or_else(
        || b64url(&sha2::Sha256::digest(thumb.as_bytes())),
        String::from,
    );
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(format!("{algorithm:?}"));
    jwk["use"] = json!("sig");
    Ok(SigningKey {
        encoding,
        algorithm,
        kid,
        jwk,
    })
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: UpstreamJwtConfig = src.settings()?;
    let bad = |m: String| vec![src.place.error(&m)];
    let key = signing_key(
        config.key.expose(),
        &config.algorithm,
        config.kid.as_deref(),
    )
    .map_err(bad)?;
    let header = HeaderName::try_from(config.header.as_str()).map_err(|_| {
        bad(format!(
            "`header`: `{}` is not a header name",
            config.header
        ))
    })?;
    if config.ttl.0 < Duration::from_secs(2) {
        return Err(bad("`ttl` is at least 2s".into()));
    }
    if config
        .jwks_path
        .as_ref()
        .is_some_and(|p| !p.starts_with('/'))
    {
        return Err(bad("`jwks_path` starts with `/`".into()));
    }
    Ok(Arc::new(UpstreamJwtSpec {
        config,
        key: Arc::new(key),
        header,
    }))
}

/// The public keys of every `upstream_jwt` policy, carried so the admin API finds them.
pub struct PublicKey(pub Value);

impl Spec for UpstreamJwtSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let c = &self.config;
        let jwk = self.key.jwk.clone();
        cx.keeper
            .keep("upstream_jwt", cx.name, jwk.to_string(), || {
                Ok::<_, String>(PublicKey(jwk.clone()))
            })?;
        let jwks = json!({"keys": [jwk]}).to_string();
        Ok(Compiled::Filter(Arc::new(UpstreamJwt {
            key: Arc::clone(&self.key),
            header: self.header.clone(),
            ttl: c.ttl.0,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            claims: c.claims.clone(),
            jwks_path: c.jwks_path.clone(),
            jwks: Bytes::from(jwks),
            signed: Verified::new(100_000),
        })))
    }
}

pub struct UpstreamJwt {
    key: Arc<SigningKey>,
    header: HeaderName,
    ttl: Duration,
    issuer: String,
    audience: Option<String>,
    claims: Vec<String>,
    jwks_path: Option<String>,
    jwks: Bytes,
    /// Tokens signed, by consumer and claims, reused for half their life.
    signed: Verified<HeaderValue>,
}

impl UpstreamJwt {
    /// The token for the request's identity; `None` without a consumer.
    fn token(&self, cx: &Context) -> Option<HeaderValue> {
        let consumer = cx.identity.consumer.as_ref()?;
        let jwt = cx.identity.jwt.as_deref();
        let mut carried = Map::new();
        for name in &self.claims {
            let value = match name.as_str() {
                "sub" => json!(&*consumer.name),
                "groups" => json!(consumer.groups),
                other => match jwt.and_then(|j| j.get(other)) {
                    Some(v) => v.clone(),
                    None => continue,
                },
            };
            carried.insert(name.clone(), value);
        }
        let parts = Value::Object(carried.clone()).to_string();
        let key = verified::digest(&[consumer.name.as_bytes(), parts.as_bytes()]);
        if let Some(token) = self.signed.get(&key) {
            return Some(token);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        carried.insert("iss".into(), json!(self.issuer));
        carried.insert("iat".into(), json!(now));
        carried.insert("exp".into(), json!(now + self.ttl.as_secs()));
        if let Some(aud) = &self.audience {
            carried.insert("aud".into(), json!(aud));
        }
        let token = self.key.sign(&Value::Object(carried))?;
        let token = HeaderValue::from_str(&token).ok()?;
        self.signed.put(key, token.clone(), self.ttl / 2);
        Some(token)
    }
}

#[async_trait]
impl Filter for UpstreamJwt {
    fn phases(&self) -> Phases {
        match self.jwks_path {
            Some(_) => Phases::REQUEST | Phases::UPSTREAM_REQUEST,
            None => Phases::UPSTREAM_REQUEST,
        }
    }

    /// Ahead of authentication, so that the JWKS is public on the routes that serve it.
    fn stage(&self) -> Stage {
        Stage::BeforeAuth
    }

    async fn request(&self, req: &RequestHeader, _cx: &mut Context) -> Result<(), Reply> {
        match &self.jwks_path {
            Some(path) if req.uri.path() == path => Err(Reply {
                status: 200,
                body: Body::Fixed(self.jwks.clone()),
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                )],
            }),
            _ => Ok(()),
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &mut Context) -> pingora::Result<()> {
        let token = self.token(cx);
        crate::headers::edit_request(req, 1, |h| {
            h.remove(&self.header);
            if let Some(token) = token {
                h.try_insert(self.header.clone(), token)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};

    fn ec_pem() -> String {
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn a_key_gives_its_jwk_with_a_thumbprint_kid() {
        let pem = ec_pem();
        let key = signing_key(&pem, "ES256", None).unwrap();
        assert_eq!(key.jwk["kty"], "EC");
        assert_eq!(key.jwk["alg"], "ES256");
        assert_eq!(key.jwk["kid"].as_str().unwrap().len(), 43);
        // The same key, the same kid.
        assert_eq!(signing_key(&pem, "ES256", None).unwrap().kid, key.kid);
        assert_eq!(signing_key(&pem, "ES256", Some("k1")).unwrap().kid, "k1");
        assert!(signing_key(&pem, "RS256", None).is_err());
        assert!(signing_key("nope", "ES256", None).is_err());
        // The token verifies against the JWK.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "a", "exp": 4_000_000_000u64}),
            &key.encoding,
        )
        .unwrap();
        let v = jsonwebtoken::Validation::new(Algorithm::ES256);
        assert!(jsonwebtoken::decode::<Value>(&token, &decoding, &v).is_ok());
    }
}
