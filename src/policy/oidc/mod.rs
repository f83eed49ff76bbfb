//! `oidc`: the relying party for browser routes (OpenID Connect, authorization code flow with
//! PKCE, `state` and `nonce`), holding the user's session so the services behind need not.
//!
//! A request with a valid session cookie (`session.rs`: sealed, split when large) gets the
//! session's identity: the consumer from `consumer_claim` of the ID token, the claims for
//! `claims_to_headers` and templates, the access token upstream with `forward_access_token`.
//! An access token about to expire is refreshed first (the new cookie goes on the answer).
//! Without a session, a browser navigation is redirected to the provider (the login attempt's
//! `state`, `nonce`, PKCE verifier and return path sealed in a short-lived cookie); any other
//! request gets 401. `redirect_path` takes the provider's answer: the state checked, the code
//! exchanged, the ID token verified (`provider.rs`), the session set, back to where the user
//! was going. `logout_path` ends the session and, when the provider has one, goes on to its
//! end-session endpoint.

mod provider;
mod session;

use super::jwt::claims;
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfTimeout, ConfigError, Secret};
use crate::consumer::{Consumer, Identity};
use crate::error;
use crate::filter::{Body, Context, Filter, Phases, Reply};
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use provider::Provider;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use session::Sealer;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const KIND: Kind = Kind {
    name: "oidc",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(default = "default_redirect_path")]
    pub redirect_path: String,
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where a logout ends (the provider is told, when it has an end-session endpoint).
    pub post_logout_redirect: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// 64 hex characters: the key that seals session cookies.
    pub cookie_secret: Secret,
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// The longest a session lasts, refreshes included.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: ConfDuration,
    /// Send the session's access token upstream as `Authorization: Bearer`.
    #[serde(default)]
    pub forward_access_token: bool,
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    pub timeout: ConfTimeout,
}

fn default_redirect_path() -> String {
    "/oauth/callback".into()
}
fn default_logout_path() -> String {
    "/logout".into()
}
fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_cookie_name() -> String {
    "pylon_session".into()
}
fn default_session_ttl() -> ConfDuration {
    ConfDuration(Duration::from_secs(8 * 3600))
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_secs(5))
}

struct OidcSpec {
    config: OidcConfig,
    headers: Arc<[(HeaderName, String)]>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: OidcConfig = src.settings()?;
    let mut errors = Vec::new();
    let mut bad = |m: String| errors.push(src.place.error(&m));
    if let Err(e) = Sealer::from_hex(config.cookie_secret.expose()) {
        bad(e);
    }
    if reqwest::Url::parse(&config.issuer).is_err() {
        bad("`issuer` is not a URL".into());
    }
    for path in [&config.redirect_path, &config.logout_path] {
        if !path.starts_with('/') {
            bad(format!("`{path}` must start with `/`"));
        }
    }
    if !config.scopes.iter().any(|s| s == "openid") {
        bad("`scopes` must include `openid`".into());
    }
    let mut headers = Vec::new();
    for (claim, header) in &config.claims_to_headers {
        match HeaderName::try_from(header.as_str()) {
            Ok(name) => headers.push((name, claim.clone())),
            Err(_) => bad(format!(
                "`claims_to_headers`: `{header}` is not a header name"
            )),
        }
    }
    match errors.is_empty() {
        true => Ok(Arc::new(OidcSpec {
            config,
            headers: headers.into(),
        })),
        false => Err(errors),
    }
}

impl Spec for OidcSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let c = &self.config;
        let consumers = cx.consumers_by_subject()?;
        // The provider's discovery and keys outlive a reload that keeps the settings.
        let settings = (
            c.issuer.clone(),
            c.client_id.clone(),
            c.client_secret.expose().to_string(),
        );
        let provider = cx.keeper.keep("oidc", cx.name, settings, || {
            Provider::new(
                &c.issuer,
                &c.client_id,
                c.client_secret.expose(),
                c.timeout.0,
            )
        })?;
        let mut owned: Vec<HeaderName> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        if c.forward_access_token {
            owned.push(http::header::AUTHORIZATION);
        }
        Ok(Compiled::Filter(Arc::new(Oidc {
            provider,
            sealer: Sealer::from_hex(c.cookie_secret.expose())?,
            client_id: c.client_id.clone(),
            redirect_path: c.redirect_path.clone(),
            logout_path: c.logout_path.clone(),
            post_logout_redirect: c.post_logout_redirect.clone(),
            scope: c.scopes.join(" "),
            cookie: c.cookie_name.clone(),
            session_ttl: c.session_ttl.0,
            forward_access_token: c.forward_access_token,
            consumer_claim: c.consumer_claim.clone(),
            headers: Arc::clone(&self.headers),
            owned: owned.into(),
            consumers,
        })))
    }
}

/// A session, as its cookie holds it.
#[derive(Serialize, Deserialize)]
struct Session {
    claims: Map<String, Value>,
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    /// When the access token expires (seconds since the epoch).
    access_until: u64,
    /// When the session ends, whatever refreshes happen.
    until: u64,
}

/// A login under way: what the provider's answer must match.
#[derive(Serialize, Deserialize)]
struct Attempt {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
}

/// What the request phase leaves for the later ones.
struct Granted {
    access_token: String,
    set_cookies: Vec<HeaderValue>,
}

pub struct Oidc {
    provider: Arc<Provider>,
    sealer: Sealer,
    client_id: String,
    redirect_path: String,
    logout_path: String,
    post_logout_redirect: Option<String>,
    scope: String,
    cookie: String,
    session_ttl: Duration,
    forward_access_token: bool,
    consumer_claim: String,
    headers: Arc<[(HeaderName, String)]>,
    owned: Box<[HeaderName]>,
    consumers: HashMap<String, Arc<Consumer>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Reply {
    let mut reply = Reply {
        status: 302,
        body: Body::Fixed(bytes::Bytes::new()),
        headers: Vec::new(),
    };
    if let Ok(location) = HeaderValue::from_str(location) {
        reply = reply.with(http::header::LOCATION, location);
    }
    reply = reply.with(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    for cookie in cookies {
        reply = reply.with(http::header::SET_COOKIE, cookie);
    }
    reply
}

impl Oidc {
    fn attributes(&self, tls: bool) -> String {
        let secure = if tls { "; Secure" } else { "" };
        format!("Path=/; HttpOnly; SameSite=Lax{secure}")
    }

    fn attempt_cookie(&self) -> String {
        format!("{}_login", self.cookie)
    }

    /// `scheme://host` of the request, for the redirect URI.
    fn origin(req: &RequestHeader, tls: bool) -> String {
        let host = crate::headers::request_host(req).unwrap_or("localhost");
        format!("{}://{host}", if tls { "https" } else { "http" })
    }

    /// A browser navigation (sent to log in) rather than an API call (answered 401).
    fn navigation(req: &RequestHeader) -> bool {
        let header = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        req.method == http::Method::GET
            && (header("sec-fetch-mode") == "navigate" || header("accept").contains("text/html"))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Option<Identity> {
        let name = claims.get(&self.consumer_claim)?.as_str()?;
        let consumer = match self.consumers.get(name) {
            Some(c) => Arc::clone(c),
            None => Arc::new(Consumer::new(name, Vec::new())),
        };
        let headers = claims::headers(claims, &self.headers);
        let mut identity = Identity::of(consumer);
        identity.authenticated = true;
        identity.claims = Some(headers.into());
        identity.jwt = Some(Arc::new(claims.clone()));
        Some(identity)
    }

    /// The session of the request's cookie, refreshed when its access token is about to end.
    async fn session(&self, req: &RequestHeader, tls: bool) -> Option<(Session, Vec<HeaderValue>)> {
        let plain = self.sealer.read(&req.headers, &self.cookie)?;
        let mut session: Session = serde_json::from_slice(&plain).ok()?;
        let now = now();
        if session.until <= now {
            return None;
        }
        if session.access_until > now + 30 {
            return Some((session, Vec::new()));
        }
        let tokens = self
            .provider
            .refresh(session.refresh_token.as_deref()?)
            .await?;
        session.access_token = tokens.access_token;
        session.access_until = now + tokens.expires_in.unwrap_or(300);
        if let Some(refresh) = tokens.refresh_token {
            session.refresh_token = Some(refresh);
        }
        if let Some(id_token) = tokens.id_token {
            if let Some(claims) = self.provider.verify_id_token(&id_token, None).await {
                session.claims = claims;
                session.id_token = Some(id_token);
            }
        }
        let cookies = self.store(&session, tls)?;
        Some((session, cookies))
    }

    fn store(&self, session: &Session, tls: bool) -> Option<Vec<HeaderValue>> {
        let plain = serde_json::to_vec(session).ok()?;
        self.sealer
            .cookies(&self.cookie, &plain, &self.attributes(tls))
    }

    /// Off to the provider's login, remembering where the user was going.
    async fn login(&self, req: &RequestHeader, tls: bool) -> Reply {
        let Some(discovery) = self.provider.discovery().await else {
            return Reply::error(error::UPSTREAM_UNAVAILABLE);
        };
        let attempt = Attempt {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            return_to: String::from_utf8_lossy(req.raw_path()).into_owned(),
        };
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(attempt.verifier.as_bytes()));
        let redirect_uri = format!("{}{}", Self::origin(req, tls), self.redirect_path);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scope)
            .append_pair("state", &attempt.state)
            .append_pair("nonce", &attempt.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{sep}{query}", discovery.authorization_endpoint);
        let sealed = serde_json::to_vec(&attempt)
            .ok()
            .and_then(|plain| self.sealer.seal(&self.attempt_cookie(), &plain));
        let Some(sealed) = sealed else {
            return Reply::error(error::UPSTREAM_UNAVAILABLE);
        };
        let cookie = format!(
            "{}={sealed}; {}; Max-Age=600",
            self.attempt_cookie(),
            self.attributes(tls)
        );
        redirect(
            &location,
            HeaderValue::from_str(&cookie).into_iter().collect(),
        )
    }

    /// The provider's answer: checked, exchanged, turned into a session.
    async fn callback(&self, req: &RequestHeader, tls: bool) -> Reply {
        let query: HashMap<String, String> =
            form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let name = self.attempt_cookie();
        let attempt: Option<Attempt> = crate::headers::cookie(&req.headers, &name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| self.sealer.open(&name, v))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let (Some(attempt), Some(code), Some(state)) =
            (attempt, query.get("code"), query.get("state"))
        else {
            return Reply::error(error::UNAUTHORIZED);
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            state.as_bytes(),
            attempt.state.as_bytes(),
        )) {
            return Reply::error(error::UNAUTHORIZED);
        }
        let redirect_uri = format!("{}{}", Self::origin(req, tls), self.redirect_path);
        let Some(tokens) = self
            .provider
            .exchange(code, &redirect_uri, &attempt.verifier)
            .await
        else {
            return Reply::error(error::UNAUTHORIZED);
        };
        let Some(id_token) = tokens.id_token.clone() else {
            return Reply::error(error::UNAUTHORIZED);
        };
        let Some(claims) = self
            .provider
            .verify_id_token(&id_token, Some(&attempt.nonce))
            .await
        else {
            return Reply::error(error::UNAUTHORIZED);
        };
        let now = now();
        let session = Session {
            claims,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token: Some(id_token),
            access_until: now + tokens.expires_in.unwrap_or(300),
            until: now + self.session_ttl.as_secs(),
        };
        let Some(mut cookies) = self.store(&session, tls) else {
            return Reply::error(error::UNAUTHORIZED);
        };
        cookies.extend(
            session::clear(&name, &self.attributes(tls))
                .into_iter()
                .take(1),
        );
        // Only a path of this site: never an open redirect.
        let back = match attempt.return_to.starts_with('/') && !attempt.return_to.starts_with("//")
        {
            true => attempt.return_to,
            false => "/".to_string(),
        };
        redirect(&back, cookies)
    }

    /// The session ends here, and at the provider when it says how.
    async fn logout(&self, req: &RequestHeader, tls: bool) -> Reply {
        let id_token = self
            .sealer
            .read(&req.headers, &self.cookie)
            .and_then(|plain| serde_json::from_slice::<Session>(&plain).ok())
            .and_then(|s| s.id_token);
        let cookies = session::clear(&self.cookie, &self.attributes(tls));
        let after = self
            .post_logout_redirect
            .clone()
            .unwrap_or_else(|| "/".into());
        let end = self
            .provider
            .discovery()
            .await
            .and_then(|d| d.end_session_endpoint.clone());
        let location = match (end, id_token) {
            (Some(end), Some(hint)) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("id_token_hint", &hint)
                    .append_pair("client_id", &self.client_id)
                    .append_pair("post_logout_redirect_uri", &after)
                    .finish();
                format!("{end}?{query}")
            }
            _ => after,
        };
        redirect(&location, cookies)
    }
}

#[async_trait]
impl Filter for Oidc {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::UPSTREAM_REQUEST | Phases::RESPONSE
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let tls = cx.tls.is_some();
        let path = req.uri.path();
        if path == self.redirect_path {
            return Err(self.callback(req, tls).await);
        }
        if path == self.logout_path {
            return Err(self.logout(req, tls).await);
        }
        if let Some((session, set_cookies)) = self.session(req, tls).await {
            if let Some(identity) = self.identity(&session.claims) {
                cx.identity = identity;
                cx.state.insert(Granted {
                    access_token: session.access_token,
                    set_cookies,
                });
                return Ok(());
            }
        }
        if Self::navigation(req) {
            return Err(self.login(req, tls).await);
        }
        super::auth::refused(cx, "oidc", "missing_credentials");
        Err(Reply::error(error::UNAUTHORIZED).with(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pylon\""),
        ))
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &mut Context) -> pingora::Result<()> {
        let claims = cx.identity.claims.as_deref().unwrap_or_default();
        let token = cx
            .state
            .get::<Granted>()
            .filter(|_| self.forward_access_token)
            .and_then(|g| HeaderValue::from_str(&format!("Bearer {}", g.access_token)).ok());
        // The session cookies are the gateway's: the services behind never see them.
        let cookie = req
            .headers
            .get(http::header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(|all| {
                all.split(';')
                    .map(str::trim)
                    .filter(|pair| {
                        let name = pair.split('=').next().unwrap_or("");
                        name != self.cookie
                            && !name.starts_with(&format!("{}.", self.cookie))
                            && name != self.attempt_cookie()
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            });
        crate::headers::edit_request(req, claims.len() + 2, |h| {
            for name in self.owned.iter() {
                h.remove(name);
            }
            match cookie {
                Some(c) if c.is_empty() => {
                    h.remove(http::header::COOKIE);
                }
                Some(c) => {
                    if let Ok(v) = HeaderValue::from_str(&c) {
                        h.insert(http::header::COOKIE, v);
                    }
                }
                None => {}
            }
            for (name, value) in claims {
                h.try_insert(name.clone(), value.clone())?;
            }
            if let Some(token) = token {
                h.try_insert(http::header::AUTHORIZATION, token)?;
            }
            Ok(())
        })
    }

    fn response(
        &self,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        if let Some(granted) = cx.state.get_mut::<Granted>() {
            for cookie in std::mem::take(&mut granted.set_cookies) {
                resp.append_header(http::header::SET_COOKIE, cookie)?;
            }
        }
        Ok(())
    }
}
