//! `oidc`: the relying party for browser routes (OpenID Connect, authorization code flow with
//! PKCE, `state` and `nonce`), holding the user's session so the services behind need not.
//!
//! A request with a valid session gets the session's identity: the consumer from
//! `consumer_claim` of the ID token, the claims for `claims_to_headers` and templates, the
//! access token upstream with `forward_access_token`. Sessions live in a sealed cookie or in
//! Redis (`store.rs`). An access token about to expire is refreshed first, and once more when
//! the upstream answers 401 to it (the request then sent again with the new one); the new
//! cookie goes on the answer. Without a session, a browser navigation is sent to the
//! provider's login (`flow.rs`); an API call gets 401, or with `bearer = true` may bring an
//! access token of the provider instead (`bearer.rs`).

mod bearer;
mod flow;
mod provider;
mod seal;
mod store;

use super::introspection::Introspection;
use super::jwt::claims;
use super::verified::Verified;
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfTimeout, ConfigError, RedisNodes, Secret};
use crate::consumer::{Consumer, Identity};
use crate::error;
use crate::filter::{Body, Context, Filter, Phases, Reply};
use crate::redis_link::RedisLink;
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType::HTTPStatus};
use provider::Provider;
use seal::Sealer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{CookieStore, RedisStore, Session, Store};
use tokio::sync::OnceCell;

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
    /// 64 hex characters: the key that seals session cookies (and sessions in Redis).
    pub cookie_secret: Secret,
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// The longest a session lasts, refreshes included.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: ConfDuration,
    /// Sessions in Redis (a URL) or a Redis Cluster (its nodes' URLs), shared by a fleet;
    /// without it, in the cookie.
    pub session_redis: Option<RedisNodes>,
    #[serde(default = "default_redis_timeout")]
    pub session_redis_timeout: ConfTimeout,
    /// Send the session's access token upstream as `Authorization: Bearer`.
    #[serde(default)]
    pub forward_access_token: bool,
    /// API clients may bring a provider's access token instead of a session.
    #[serde(default)]
    pub bearer: bool,
    /// Audiences a bearer token must name one of (any, if empty).
    #[serde(default)]
    pub bearer_audience: Vec<String>,
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
fn default_redis_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_millis(500))
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
    if let Some(nodes) = &config.session_redis {
        if let Err(e) = RedisLink::check(None, nodes.urls(), "session_redis URL") {
            bad(e);
        }
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
        // The provider's discovery, keys, refreshes and bearer answers outlive a reload that
        // keeps the settings; so does the connection to the session store.
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
        let sealer = Arc::new(Sealer::from_hex(c.cookie_secret.expose())?);
        let name = c.cookie_name.clone();
        let store: Box<dyn Store> = match &c.session_redis {
            None => {
                // Opened cookies outlive a reload that keeps the key.
                let key = c.cookie_secret.expose().to_string();
                let opened = cx.keeper.keep("oidc_sessions", cx.name, key, || {
                    Ok::<_, String>(Verified::new(100_000))
                })?;
                Box::new(CookieStore::new(sealer.clone(), name, opened))
            }
            Some(nodes) => {
                let timeout = c.session_redis_timeout.0;
                let redis =
                    cx.keeper
                        .keep("oidc_redis", cx.name, (nodes.clone(), timeout), || {
                            let urls = nodes.urls();
                            match urls {
                                [one] => RedisLink::new(Some(one), &[], timeout),
                                seeds => RedisLink::new(None, seeds, timeout),
                            }
                        })?;
                Box::new(RedisStore {
                    sealer: sealer.clone(),
                    name,
                    redis,
                    timeout,
                })
            }
        };
        let mut owned: Vec<HeaderName> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        if c.forward_access_token || c.bearer {
            owned.push(http::header::AUTHORIZATION);
        }
        Ok(Compiled::Filter(Arc::new(Oidc {
            name: cx.name.to_string(),
            provider,
            sealer,
            store,
            client_id: c.client_id.clone(),
            redirect_path: c.redirect_path.clone(),
            logout_path: c.logout_path.clone(),
            post_logout_redirect: c.post_logout_redirect.clone(),
            scope: c.scopes.join(" "),
            cookie: c.cookie_name.clone(),
            parts: seal::part_names(&c.cookie_name)[1..].into(),
            attempt: format!("{}_login", c.cookie_name),
            session_ttl: c.session_ttl.0,
            forward_access_token: c.forward_access_token,
            bearer: c.bearer,
            bearer_audience: c.bearer_audience.clone(),
            introspection: OnceCell::new(),
            consumer_claim: c.consumer_claim.clone(),
            headers: Arc::clone(&self.headers),
            owned: owned.into(),
            consumers,
            timeout: c.timeout.0,
        })))
    }
}

/// Where a request stands with an upstream 401.
#[derive(Default, PartialEq)]
enum Renewal {
    #[default]
    None,
    /// The upstream refused the access token: refresh, and send the request again.
    Asked,
    /// Done once; never again for this request.
    Done,
}

/// What the request phase leaves for the later ones.
#[derive(Default)]
struct Granted {
    /// The session (none for a bearer token).
    session: Option<Arc<Session>>,
    /// The client's own access token (`bearer = true`).
    bearer: Option<String>,
    set_cookies: Vec<HeaderValue>,
    renewal: Renewal,
    tls: bool,
}

pub struct Oidc {
    name: String,
    provider: Arc<Provider>,
    sealer: Arc<Sealer>,
    store: Box<dyn Store>,
    client_id: String,
    redirect_path: String,
    logout_path: String,
    post_logout_redirect: Option<String>,
    scope: String,
    cookie: String,
    /// The names of the session cookie's other parts, and of the login attempt's cookie.
    parts: Box<[String]>,
    attempt: String,
    session_ttl: Duration,
    forward_access_token: bool,
    bearer: bool,
    bearer_audience: Vec<String>,
    introspection: OnceCell<Introspection>,
    consumer_claim: String,
    headers: Arc<[(HeaderName, String)]>,
    owned: Box<[HeaderName]>,
    consumers: HashMap<String, Arc<Consumer>>,
    timeout: Duration,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// When an access token given now for `expires_in` seconds expires, and when to refresh it:
/// 30 seconds before, or a quarter of its life before for a short-lived one.
fn lifetime(now: u64, expires_in: Option<u64>) -> (u64, u64) {
    let life = expires_in.unwrap_or(300);
    (now + life, now + life - (life / 4).min(30))
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

    fn identity(&self, claims: &Arc<Map<String, Value>>) -> Option<Identity> {
        let name = claims.get(&self.consumer_claim)?.as_str()?;
        let consumer = match self.consumers.get(name) {
            Some(c) => Arc::clone(c),
            None => Arc::new(Consumer::new(name, Vec::new())),
        };
        let headers = claims::headers(claims, &self.headers);
        let mut identity = Identity::of(consumer);
        identity.authenticated = true;
        identity.claims = Some(headers.into());
        identity.jwt = Some(Arc::clone(claims));
        Some(identity)
    }

    /// Store `session`: the cookies that name it, living as long as it does.
    async fn keep(&self, session: &mut Session, tls: bool) -> Option<Vec<HeaderValue>> {
        let left = session.until.saturating_sub(now());
        let attributes = format!("{}; Max-Age={left}", self.attributes(tls));
        self.store.save(session, &attributes).await
    }

    /// The request's session, refreshed when its access token is due. `Err`: the store did
    /// not answer.
    async fn current(
        &self,
        req: &RequestHeader,
        tls: bool,
    ) -> Result<Option<(Arc<Session>, Vec<HeaderValue>)>, ()> {
        let Some(session) = self.store.load(&req.headers).await? else {
            return Ok(None);
        };
        let now = now();
        if session.until <= now {
            return Ok(None);
        }
        if now < session.refresh_at {
            return Ok(Some((session, Vec::new())));
        }
        Ok(self.renew(session, tls, false).await)
    }

    /// The session with new tokens (and the cookies that now name it); without new ones, the
    /// session as it was while its access token lasts, unless the upstream refused that
    /// (`refused`). Once per refresh token across the fleet (`store.rs`, `provider.rs`).
    async fn renew(
        &self,
        session: Arc<Session>,
        tls: bool,
        refused: bool,
    ) -> Option<(Arc<Session>, Vec<HeaderValue>)> {
        let as_was =
            |s: Arc<Session>| (!refused && now() < s.access_until).then(|| (s, Vec::new()));
        let Some(refresh) = session.refresh_token.clone() else {
            return as_was(session);
        };
        if !self.store.claim(&session).await {
            return match self.store.renewed(&session).await {
                Some(newer) => Some((newer, Vec::new())),
                None => as_was(session),
            };
        }
        let Some(tokens) = self.provider.refresh(&refresh).await else {
            self.store.release(&session).await;
            return as_was(session);
        };
        let now = now();
        let mut next = Session::clone(&session);
        (next.access_until, next.refresh_at) = lifetime(now, tokens.expires_in);
        next.access_token = tokens.access_token;
        if let Some(refresh) = tokens.refresh_token {
            next.refresh_token = Some(refresh);
        }
        if let Some(id_token) = tokens.id_token {
            if let Some(claims) = self.provider.verify_id_token(&id_token, None).await {
                next.claims = Arc::new(claims);
                next.id_token = Some(id_token);
            }
        }
        // Not kept (the store down): this request still goes on with the new token.
        let cookies = self.keep(&mut next, tls).await.unwrap_or_default();
        Some((Arc::new(next), cookies))
    }
}

#[async_trait]
impl Filter for Oidc {
    fn phases(&self) -> Phases {
        let mut phases = Phases::REQUEST | Phases::UPSTREAM_REQUEST | Phases::RESPONSE;
        if self.forward_access_token {
            phases |= Phases::UPSTREAM_RESPONSE | Phases::RETRY;
        }
        phases
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
        match self.current(req, tls).await {
            Err(()) => return Err(Reply::error(error::UPSTREAM_UNAVAILABLE)),
            Ok(Some((session, set_cookies))) => {
                if let Some(identity) = self.identity(&session.claims) {
                    cx.identity = identity;
                    cx.state.insert(Granted {
                        session: Some(session),
                        bearer: None,
                        set_cookies,
                        renewal: Renewal::None,
                        tls,
                    });
                    return Ok(());
                }
            }
            Ok(None) => {}
        }
        if self.bearer {
            let token = super::auth::authorization(req, b"bearer ");
            if let Some(token) = token.and_then(|t| std::str::from_utf8(t).ok()) {
                return self.bearer(token, cx).await;
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
            .and_then(|g| {
                let session = g.session.as_ref().map(|s| s.access_token.as_str());
                session.or(g.bearer.as_deref())
            })
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
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
                            && !self.parts.iter().any(|p| p == name)
                            && name != self.attempt
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

    /// The upstream refused the session's access token (revoked, or expired early): once,
    /// refresh it and send the request again, if it can be sent whole.
    fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        if resp.status != http::StatusCode::UNAUTHORIZED || !cx.body_replayable {
            return Ok(());
        }
        let Some(granted) = cx.state.get_mut::<Granted>() else {
            return Ok(());
        };
        let renewable = granted
            .session
            .as_ref()
            .is_some_and(|s| s.refresh_token.is_some());
        if !renewable || granted.renewal != Renewal::None {
            return Ok(());
        }
        granted.renewal = Renewal::Asked;
        let mut e = Error::explain(HTTPStatus(401), "the upstream refused the access token");
        e.set_retry(true);
        Err(e)
    }

    async fn retry(&self, cx: &mut Context) -> Result<(), Reply> {
        let Some(granted) = cx.state.get_mut::<Granted>() else {
            return Ok(());
        };
        if granted.renewal != Renewal::Asked {
            return Ok(());
        }
        granted.renewal = Renewal::Done;
        let Some(session) = granted.session.take() else {
            return Ok(());
        };
        match self.renew(session, granted.tls, true).await {
            Some((session, cookies)) => {
                granted.session = Some(session);
                granted.set_cookies = cookies;
                Ok(())
            }
            None => {
                // The session cannot go on: its cookies go, and the client logs in again.
                granted.set_cookies = seal::clear(&self.cookie, &self.attributes(granted.tls));
                super::auth::refused(cx, "oidc", "session_refused");
                Err(Reply::error(error::UNAUTHORIZED))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::lifetime;

    #[test]
    fn a_token_is_refreshed_30_seconds_or_a_quarter_of_its_life_before_it_ends() {
        assert_eq!(lifetime(1000, Some(300)), (1300, 1270));
        assert_eq!(lifetime(1000, Some(40)), (1040, 1030));
        assert_eq!(lifetime(1000, Some(4)), (1004, 1003));
        assert_eq!(lifetime(1000, None), (1300, 1270));
    }
}
