//! `oauth2_introspection`: opaque bearer tokens checked at the issuer's RFC 7662 endpoint.
//!
//! The gateway authenticates to the endpoint as `client_id` (`client_secret_basic`,
//! `client_secret_post`, or `private_key_jwt`: an assertion signed with `private_key`). A token
//! is granted when the answer says `active`, its `aud` names one of `audience` (if set) and it
//! grants every `required_scopes` (else 403). The consumer comes from `consumer_claim` (default
//! `sub`, then `client_id`): a consumer whose `jwt_subject` or name it is, or a new one of that
//! name; the claims serve templates and `claims_to_headers` as a JWT's do. Answers are
//! remembered, granted for `cache_ttl` and refused for `negative_cache_ttl`, never past the
//! token's `exp`, under a keyed digest of the token; concurrent requests with a token not yet
//! known wait for one introspection. An endpoint that cannot answer gives 503 (not remembered).

use super::auth::{Auth, Authenticator, Found};
use super::jwt::claims;
use super::upstream_jwt::{signing_key, SigningKey};
use super::verified::{self, CredentialDigest, Verified};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfTimeout, ConfigError, Secret};
use crate::consumer::{Consumer, Identity};
use crate::filter::Context;
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

pub const KIND: Kind = Kind {
    name: "oauth2_introspection",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The issuer's introspection endpoint.
    pub endpoint: String,
    pub client_id: String,
    /// For `client_secret_basic` and `client_secret_post`.
    pub client_secret: Option<Secret>,
    /// `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
    #[serde(default = "default_client_auth")]
    pub client_auth: String,
    /// For `private_key_jwt`: a PEM private key.
    pub private_key: Option<Secret>,
    /// The authorization server's issuer identifier, the audience of a `private_key_jwt`
    /// assertion (as RFC 7523bis asks); default the endpoint's origin.
    pub issuer: Option<String>,
    /// `RS256` or `ES256`, the private key's.
    #[serde(default = "default_key_algorithm")]
    pub private_key_algorithm: String,
    /// The key's `kid` as the issuer knows it; default its RFC 7638 thumbprint.
    pub private_key_kid: Option<String>,
    /// `aud` must name one of these (when given).
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: ConfDuration,
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: ConfDuration,
    #[serde(default = "default_timeout")]
    pub timeout: ConfTimeout,
    /// The claim naming the consumer; `client_id` when it is absent.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub forward_credentials: bool,
    pub anonymous: Option<String>,
}

fn default_client_auth() -> String {
    "client_secret_basic".into()
}
fn default_key_algorithm() -> String {
    "RS256".into()
}
fn default_cache_ttl() -> ConfDuration {
    ConfDuration(Duration::from_secs(60))
}
fn default_negative_ttl() -> ConfDuration {
    ConfDuration(Duration::from_secs(10))
}
fn default_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(2))
}
fn default_consumer_claim() -> String {
    "sub".into()
}

/// How the gateway proves itself to the endpoint.
enum ClientAuth {
    Basic(HeaderValue),
    Post(String),
    Jwt(Arc<SigningKey>),
}

struct IntrospectionSpec {
    config: IntrospectionConfig,
    client_auth: Arc<ClientAuth>,
    headers: Arc<[(HeaderName, String)]>,
}

fn form(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: IntrospectionConfig = src.settings()?;
    let mut errors = Vec::new();
    src.check_anonymous(&config.anonymous, &mut errors);
    let bad = |m: &str| src.place.error(m);
    if reqwest::Url::parse(&config.endpoint).is_err() {
        errors.push(bad("`endpoint` is not a URL"));
    }
    let secret = config
        .client_secret
        .as_ref()
        .map(|s| s.expose().to_string());
    let client_auth = match (config.client_auth.as_str(), secret, &config.private_key) {
        ("client_secret_basic", Some(secret), _) => {
            let pair = format!("{}:{}", form(&config.client_id), form(&secret));
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            HeaderValue::from_str(&format!("Basic {encoded}"))
                .ok()
                .map(ClientAuth::Basic)
        }
        ("client_secret_post", Some(secret), _) => Some(ClientAuth::Post(format!(
            "client_id={}&client_secret={}",
            form(&config.client_id),
            form(&secret)
        ))),
        ("private_key_jwt", _, Some(key)) => {
            let kid = config.private_key_kid.as_deref();
            match signing_key(key.expose(), &config.private_key_algorithm, kid) {
                Ok(key) => Some(ClientAuth::Jwt(Arc::new(key))),
                Err(e) => {
                    errors.push(bad(&format!("`private_key`: {e}")));
                    None
                }
            }
        }
        ("client_secret_basic" | "client_secret_post", None, _) => {
            errors.push(bad("`client_secret` is needed for this `client_auth`"));
            None
        }
        ("private_key_jwt", _, None) => {
            errors.push(bad("`private_key` is needed for `private_key_jwt`"));
            None
        }
        _ => {
            errors.push(bad(
                "`client_auth` is client_secret_basic, client_secret_post or private_key_jwt",
            ));
            None
        }
    };
    let mut headers = Vec::new();
    for (claim, header) in &config.claims_to_headers {
        match HeaderName::try_from(header.as_str()) {
            Ok(name) => headers.push((name, claim.clone())),
            Err(_) => errors.push(bad(&format!(
                "`claims_to_headers`: `{header}` is not a header name"
            ))),
        }
    }
    match (client_auth, errors.is_empty()) {
        (Some(client_auth), true) => Ok(Arc::new(IntrospectionSpec {
            config,
            client_auth: Arc::new(client_auth),
            headers: headers.into(),
        })),
        _ => Err(errors),
    }
}

impl Spec for IntrospectionSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let c = &self.config;
        let consumers = cx.consumers_by_subject()?;
        let settings = serde_json::to_string(c).map_err(|e| e.to_string())?;
        let cache = cx
            .keeper
            .keep("oauth2_introspection", cx.name, settings, || {
                Ok::<_, String>(Verified::new(100_000))
            })?;
        let issuer = match &c.issuer {
            Some(issuer) => issuer.clone(),
            None => {
                let url = reqwest::Url::parse(&c.endpoint).map_err(|e| e.to_string())?;
                url.origin().ascii_serialization()
            }
        };
        let http = reqwest::Client::builder()
            .timeout(c.timeout.0)
            .build()
            .map_err(|e| e.to_string())?;
        let owned: Vec<HeaderName> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        Ok(Compiled::Auth(Arc::new(Introspection {
            name: cx.name.into(),
            endpoint: c.endpoint.clone(),
            issuer,
            client_id: c.client_id.clone(),
            client_auth: Arc::clone(&self.client_auth),
            audience: c.audience.clone(),
            required_scopes: c.required_scopes.clone(),
            cache_ttl: c.cache_ttl.0,
            negative_ttl: c.negative_cache_ttl.0,
            consumer_claim: c.consumer_claim.clone(),
            headers: Arc::clone(&self.headers),
            owned: owned.into(),
            forward_credentials: c.forward_credentials,
            anonymous: cx.anonymous(&c.anonymous)?,
            consumers,
            cache,
            inflight: Mutex::default(),
            http,
        })))
    }
}

/// What an introspection said of a token.
#[derive(Clone)]
pub enum Outcome {
    Granted(Identity),
    Refused(&'static str),
    Forbidden(&'static str),
}

type Flight = Arc<OnceCell<Option<Outcome>>>;

/// Remembered answers, by keyed token digest: kept across reloads by their owner.
pub type Answers = Verified<Outcome>;

/// What an `oidc` route's bearer tokens are checked with: its provider's endpoint and client.
pub struct AtProvider<'a> {
    pub name: &'a str,
    pub endpoint: &'a str,
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub consumer_claim: &'a str,
    /// Audiences the token must name one of (any, if empty).
    pub audience: Vec<String>,
    pub headers: Arc<[(HeaderName, String)]>,
    pub consumers: HashMap<String, Arc<Consumer>>,
    pub answers: Arc<Answers>,
    pub timeout: Duration,
}

pub struct Introspection {
    name: Arc<str>,
    endpoint: String,
    issuer: String,
    client_id: String,
    client_auth: Arc<ClientAuth>,
    audience: Vec<String>,
    required_scopes: Vec<String>,
    cache_ttl: Duration,
    negative_ttl: Duration,
    consumer_claim: String,
    headers: Arc<[(HeaderName, String)]>,
    owned: Box<[HeaderName]>,
    forward_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    consumers: HashMap<String, Arc<Consumer>>,
    cache: Arc<Verified<Outcome>>,
    /// Introspections under way, by token digest: later requests wait for the first.
    inflight: Mutex<HashMap<CredentialDigest, Flight>>,
    http: reqwest::Client,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Introspection {
    /// Introspection at an OpenID provider (`oidc`'s opaque bearer tokens): its client's
    /// `client_secret_basic` credentials, no scope asked, answers remembered for
    /// a minute (granted) or ten seconds (refused).
    pub fn at_provider(p: AtProvider<'_>) -> Introspection {
        let pair = format!("{}:{}", form(p.client_id), form(p.client_secret));
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        let basic = HeaderValue::from_str(&format!("Basic {encoded}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        Introspection {
            name: p.name.into(),
            endpoint: p.endpoint.into(),
            issuer: p.issuer.into(),
            client_id: p.client_id.into(),
            client_auth: Arc::new(ClientAuth::Basic(basic)),
            audience: p.audience,
            required_scopes: Vec::new(),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            consumer_claim: p.consumer_claim.into(),
            headers: p.headers,
            owned: Box::default(),
            forward_credentials: false,
            anonymous: None,
            consumers: p.consumers,
            cache: p.answers,
            inflight: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(p.timeout)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Who `token` is, as the endpoint says (remembered, or asked once).
    pub async fn check(&self, token: &[u8]) -> Auth {
        match self.judge(token).await {
            Some(Outcome::Granted(identity)) => Auth::Granted(identity),
            Some(Outcome::Refused(why)) => Auth::Refused(why),
            Some(Outcome::Forbidden(why)) => Auth::Forbidden(why),
            None => Auth::Unavailable,
        }
    }

    /// The outcome for `token`: remembered, or asked once however many ask at once. `None`
    /// when the endpoint could not answer.
    async fn judge(&self, token: &[u8]) -> Option<Outcome> {
        let key = verified::digest(&[token]);
        if let Some(known) = self.cache.get(&key) {
            return Some(known);
        }
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(inflight.entry(key).or_default())
        };
        let outcome = flight
            .get_or_init(|| async {
                // A flight that ended just before this one began has remembered its answer.
                if let Some(known) = self.cache.get(&key) {
                    return Some(known);
                }
                let asked = self.introspect(token).await;
                if let Some((outcome, ttl)) = &asked {
                    self.cache.put(key, outcome.clone(), *ttl);
                }
                asked.map(|(outcome, _)| outcome)
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(&key);
        }
        outcome
    }

    /// Ask the endpoint: the outcome and how long it may be remembered.
    async fn introspect(&self, token: &[u8]) -> Option<(Outcome, Duration)> {
        let token = std::str::from_utf8(token).ok()?;
        let mut body = format!("token={}&token_type_hint=access_token", form(token));
        let mut request = self.http.post(&self.endpoint);
        match &*self.client_auth {
            ClientAuth::Basic(header) => request = request.header("authorization", header.clone()),
            ClientAuth::Post(params) => {
                body.push('&');
                body.push_str(params);
            }
            ClientAuth::Jwt(key) => {
                let now = now_secs();
                let jti = hex::encode(rand::random::<[u8; 16]>());
                let assertion = key.sign(&json!({
                    "iss": self.client_id, "sub": self.client_id, "aud": self.issuer,
                    "iat": now, "exp": now + 60, "jti": jti,
                }))?;
                body.push_str(&format!(
                    "&client_id={}&client_assertion_type={}&client_assertion={assertion}",
                    form(&self.client_id),
                    form("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                ));
            }
        }
        let said: Map<String, Value> = post_form(request, body, &self.name).await?;
        Some(self.outcome(said))
    }

    /// What an endpoint's answer grants, and for how long.
    fn outcome(&self, said: Map<String, Value>) -> (Outcome, Duration) {
        let refused = |why| (Outcome::Refused(why), self.negative_ttl);
        if said.get("active") != Some(&Value::Bool(true)) {
            return refused("inactive");
        }
        let now = now_secs();
        let exp = said.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|exp| exp <= now) {
            return refused("expired");
        }
        let left = exp.map_or(self.cache_ttl, |exp| Duration::from_secs(exp - now));
        let keep = |ttl: Duration| ttl.min(left);
        let audiences = claims::strings(said.get("aud"));
        if !self.audience.is_empty() && !audiences.iter().any(|a| self.audience.contains(a)) {
            return (Outcome::Refused("wrong_audience"), keep(self.negative_ttl));
        }
        let granted = claims::scopes(&said);
        if self.required_scopes.iter().any(|s| !granted.contains(s)) {
            return (
                Outcome::Forbidden("insufficient_scope"),
                keep(self.negative_ttl),
            );
        }
        let name = said
            .get(&self.consumer_claim)
            .or_else(|| said.get("client_id"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.is_empty() {
            return refused("no_consumer");
        }
        let consumer = match self.consumers.get(name) {
            Some(c) => Arc::clone(c),
            None => Arc::new(Consumer::new(name, Vec::new())),
        };
        let headers = claims::headers(&said, &self.headers);
        let mut identity = Identity::of(consumer);
        identity.claims = Some(headers.into());
        identity.jwt = Some(Arc::new(said));
        (Outcome::Granted(identity), keep(self.cache_ttl))
    }
}

/// POST a form to an OAuth endpoint (introspection, token) and read its JSON answer; `None`
/// when it cannot be reached or does not answer 2xx (logged under `policy`).
pub async fn post_form<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    body: String,
    policy: &str,
) -> Option<T> {
    let answer = request
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        log::warn!("{policy}: {} answered {}", answer.url(), answer.status());
        return None;
    }
    serde_json::from_slice(&answer.bytes().await.ok()?).ok()
}

#[async_trait]
impl Authenticator for Introspection {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
        _cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)> {
        let token = super::auth::authorization(req, b"bearer ")?;
        let found =
            (!self.forward_credentials).then_some(Found::Header(http::header::AUTHORIZATION));
        Some((self.check(token).await, found))
    }

    fn challenge(&self, reason: &str) -> HeaderValue {
        match reason {
            "missing_credentials" => HeaderValue::from_static("Bearer realm=\"pylon\""),
            _ => HeaderValue::from_static("Bearer realm=\"pylon\", error=\"invalid_token\""),
        }
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }

    fn owned_headers(&self) -> &[HeaderName] {
        &self.owned
    }
}
