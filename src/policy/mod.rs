//! Policies: the per-route chain that runs before a request is proxied.
//!
//! Each `[policies.NAME]` compiles once into a [`Policy`]; a route's [`Chain`] is the global
//! policies followed by its own, with every auth policy moved ahead of the others (keeping their
//! order): limits and ACLs need to know the consumer, wherever they were listed. Authentication
//! follows Kong's rule: among several auth policies, the first that finds its credential
//! decides; when none finds one, the anonymous consumer of the first that has one applies, or
//! the request is refused with 401 before any other policy runs.

pub mod acl;
pub mod api_key;
pub mod basic_auth;
pub mod concurrency;
pub mod jwks;
pub mod jwt;
pub mod limit_key;
pub mod rate_limit;
pub mod verified;

use crate::config::{Config, ConfigError, PolicyConfig};
use crate::error::{self, GatewayError};
use http::{HeaderName, HeaderValue};
use jwks::Jwks;
use limit_key::Facts;
use rate_limit::cluster::ClusterWindows;
use rate_limit::local::LocalWindows;
use rate_limit::{Checked, LimitStatus};
use std::collections::HashMap;
use std::sync::Arc;

/// A known client, identified by an auth policy.
pub struct Consumer {
    pub name: Arc<str>,
    /// `name` as the upstream `x-consumer` value, built once.
    pub header: HeaderValue,
    pub groups: Box<[String]>,
}

impl Consumer {
    pub fn new(name: &str, groups: Vec<String>) -> Consumer {
        Consumer {
            name: name.into(),
            header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("")),
            groups: groups.into(),
        }
    }
}

/// Who a credential proved the client to be.
#[derive(Clone, Default)]
pub struct Identity {
    /// The consumer, when the credential maps to one (a JWT may authenticate without).
    pub consumer: Option<Arc<Consumer>>,
    /// Headers to send upstream, from JWT claims.
    pub claims: Option<Arc<[(HeaderName, HeaderValue)]>>,
}

/// An auth policy's answer about a credential it found.
pub enum Auth {
    Granted(Identity),
    /// Bad credentials: 401.
    Refused(&'static str),
    /// Good credentials that do not grant this route: 403.
    Forbidden(&'static str),
    /// The check could not run in time (bcrypt saturated): 429.
    Busy,
}

impl Auth {
    fn consumer(consumer: Arc<Consumer>) -> Auth {
        Auth::Granted(Identity {
            consumer: Some(consumer),
            claims: None,
        })
    }
}

pub enum Kind {
    ApiKey(api_key::ApiKey),
    BasicAuth(Box<basic_auth::BasicAuth>),
    Jwt(Box<jwt::Jwt>),
    Acl(acl::Acl),
    RateLimit(Box<rate_limit::RateLimit>),
    ConcurrencyLimit(Box<concurrency::ConcurrencyLimit>),
}

pub struct Policy {
    pub name: Arc<str>,
    pub kind: Kind,
    /// For auth policies: the consumer of requests that carry no credential at all.
    pub anonymous: Option<Arc<Consumer>>,
}

/// The credential of `Authorization: <scheme> <credential>`, when the scheme (given lower-case,
/// with its trailing space) matches, in any case.
pub fn authorization<'a>(req: &'a pingora::http::RequestHeader, scheme: &[u8]) -> Option<&'a [u8]> {
    let value = req.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (given, rest) = value.split_at_checked(scheme.len())?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_ascii())
}

/// Where a credential was found, so it can be stripped before proxying.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Header(HeaderName),
    Query(String),
}

impl Policy {
    fn is_auth(&self) -> bool {
        matches!(
            self.kind,
            Kind::ApiKey(_) | Kind::BasicAuth(_) | Kind::Jwt(_)
        )
    }

    /// `WWW-Authenticate` for a 401 from this policy.
    fn challenge(&self, reason: &str) -> HeaderValue {
        match &self.kind {
            Kind::ApiKey(k) => k.challenge.clone(),
            Kind::BasicAuth(b) => b.challenge.clone(),
            Kind::Jwt(j) if reason == "missing_credentials" => j.challenge.clone(),
            Kind::Jwt(j) => j.invalid_challenge.clone(),
            Kind::Acl(_) | Kind::RateLimit(_) | Kind::ConcurrencyLimit(_) => {
                HeaderValue::from_static("Bearer realm=\"pylon\"")
            }
        }
    }

    /// Run an auth policy: `None` when the request carries no credential of its kind.
    async fn authenticate(
        &self,
        req: &pingora::http::RequestHeader,
    ) -> Option<(Auth, Option<Found>)> {
        let authorization =
            |forward: bool| (!forward).then_some(Found::Header(http::header::AUTHORIZATION));
        match &self.kind {
            Kind::ApiKey(k) => {
                let (presented, found) = k.credential(req)?;
                let auth = match k.keys.lookup(presented) {
                    Some(c) => Auth::consumer(Arc::clone(c)),
                    None => Auth::Refused("invalid_credentials"),
                };
                Some((auth, (!k.forward_credentials).then_some(found)))
            }
            Kind::BasicAuth(b) => {
                let encoded = basic_auth::BasicAuth::credential(req)?;
                let auth = b.authenticate(encoded).await;
                Some((auth, authorization(b.forward_credentials)))
            }
            Kind::Jwt(j) => {
                let token = jwt::Jwt::credential(req)?;
                let auth = j.authenticate(token).await;
                Some((auth, authorization(j.forward_credentials)))
            }
            Kind::Acl(_) | Kind::RateLimit(_) | Kind::ConcurrencyLimit(_) => None,
        }
    }
}

/// Consumers of a configuration, indexed by each kind of credential.
struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
    keys: Arc<api_key::KeyIndex>,
    basic: Arc<basic_auth::Users>,
    subjects: Arc<HashMap<String, Arc<Consumer>>>,
}

impl Consumers {
    fn compile(config: &Config) -> Result<Consumers, ConfigError> {
        let mut by_name = HashMap::new();
        let mut keys = api_key::KeyIndex::default();
        let mut basic = basic_auth::Users::new();
        let mut subjects = HashMap::new();
        for (name, consumer) in &config.consumers {
            let c = Arc::new(Consumer::new(name, consumer.groups.clone()));
            for key in &consumer.api_keys {
                let secret = key.get_ref().expose();
                if !secret.starts_with("sha256:") {
                    log::warn!(
                        "consumer `{name}` has a plain API key in the config; store it as sha256:<hex>"
                    );
                }
                let digest =
                    api_key::key_digest(secret).map_err(|e| ConfigError::at(key.span(), e))?;
                keys.insert(digest, Arc::clone(&c));
            }
            if let Some(cred) = &consumer.basic_auth {
                let cred = cred.get_ref();
                basic.insert(
                    cred.user.clone(),
                    basic_auth::User {
                        hash: cred.password_hash.expose().into(),
                        consumer: Arc::clone(&c),
                    },
                );
            }
            if let Some(subject) = &consumer.jwt_subject {
                subjects.insert(subject.get_ref().clone(), Arc::clone(&c));
            }
            by_name.insert(name.clone(), c);
        }
        Ok(Consumers {
            by_name,
            keys: Arc::new(keys),
            basic: Arc::new(basic),
            subjects: Arc::new(subjects),
        })
    }
}

/// State that outlives one configuration: kept across reloads while its settings stay the
/// same, so a reload neither refetches keys nor forgets counts.
#[derive(Default)]
pub struct State {
    /// Every JWKS the policies use, for the background refresher.
    pub jwks: Vec<Arc<Jwks>>,
    redis: Vec<Arc<ClusterWindows>>,
    /// Local rate-limit windows by policy name, with the settings they count for.
    local: HashMap<String, (crate::config::RateLimitConfig, Arc<LocalWindows>)>,
    /// Basic-auth outcomes by policy name, with a fingerprint of the policy and its users.
    basic: HashMap<String, ([u8; 32], Arc<basic_auth::Outcomes>)>,
    /// In-flight counts by policy name, likewise: requests started before a reload still hold
    /// their slots.
    inflight: HashMap<
        String,
        (
            crate::config::ConcurrencyLimitConfig,
            Arc<concurrency::Counts>,
        ),
    >,
}

/// The compiled policies of a configuration.
pub struct Compiled {
    pub policies: HashMap<String, Arc<Policy>>,
    pub state: State,
}

/// Compile every policy, reusing what `previous` holds where its settings are unchanged.
pub fn compile(config: &Config, previous: &State) -> Result<Compiled, ConfigError> {
    let consumers = Consumers::compile(config)?;
    let mut state = State::default();
    let jwks = &mut state.jwks;
    let mut policies = HashMap::new();
    for (name, p) in &config.policies {
        let at = |e: String| ConfigError::at(p.span.clone(), format!("policy `{name}`: {e}"));
        let kind = match &p.value {
            PolicyConfig::ApiKey(k) => {
                Kind::ApiKey(api_key::ApiKey::new(k, Arc::clone(&consumers.keys)).map_err(at)?)
            }
            PolicyConfig::BasicAuth(b) => {
                let users = match &b.htpasswd {
                    Some(path) => {
                        Arc::new(basic_auth::read_htpasswd(path, &consumers.by_name).map_err(at)?)
                    }
                    None => Arc::clone(&consumers.basic),
                };
                // Remembered outcomes stay valid while the policy and its users are unchanged: a
                // reload must not send every client back through bcrypt at once.
                let fingerprint = basic_auth::fingerprint(b, &users);
                let verified = previous
                    .basic
                    .get(name)
                    .filter(|(f, _)| *f == fingerprint)
                    .map_or_else(basic_auth::outcomes, |(_, v)| Arc::clone(v));
                state
                    .basic
                    .insert(name.clone(), (fingerprint, Arc::clone(&verified)));
                Kind::BasicAuth(Box::new(
                    basic_auth::BasicAuth::new(b, users, verified).map_err(at)?,
                ))
            }
            PolicyConfig::Jwt(j) => {
                let set = match &j.jwks_url {
                    None => None,
                    Some(url) => {
                        let (refresh, min_refresh) = (j.jwks_refresh.0, j.jwks_min_refresh.0);
                        let known = jwks
                            .iter()
                            .chain(&previous.jwks)
                            .find(|s| s.is(url, refresh, min_refresh));
                        let set = match known {
                            Some(s) => Arc::clone(s),
                            None => Arc::new(Jwks::new(url, refresh, min_refresh).map_err(at)?),
                        };
                        if !jwks.iter().any(|s| Arc::ptr_eq(s, &set)) {
                            jwks.push(Arc::clone(&set));
                        }
                        Some(set)
                    }
                };
                Kind::Jwt(Box::new(
                    jwt::Jwt::new(j, Arc::clone(&consumers.subjects), set).map_err(at)?,
                ))
            }
            PolicyConfig::Acl(a) => Kind::Acl(acl::Acl::new(a)),
            PolicyConfig::RateLimit(r) => {
                let store = match (&r.scope, &r.redis_url) {
                    (crate::config::LimitScope::Cluster, Some(url)) => {
                        let timeout = r.store_timeout.0;
                        let known = state
                            .redis
                            .iter()
                            .chain(&previous.redis)
                            .find(|s| &s.url == url && s.timeout == timeout);
                        let store = match known {
                            Some(s) => Arc::clone(s),
                            None => Arc::new(ClusterWindows::new(url, timeout).map_err(at)?),
                        };
                        if !state.redis.iter().any(|s| Arc::ptr_eq(s, &store)) {
                            state.redis.push(Arc::clone(&store));
                        }
                        rate_limit::Store::Cluster(store)
                    }
                    (crate::config::LimitScope::Cluster, None) => {
                        return Err(at("`scope = \"cluster\"` needs a `redis_url`".into()))
                    }
                    (crate::config::LimitScope::Local, _) => {
                        rate_limit::Store::Local(keep(&previous.local, &mut state.local, name, r))
                    }
                };
                Kind::RateLimit(Box::new(
                    rate_limit::RateLimit::new(name, r, store).map_err(at)?,
                ))
            }
            PolicyConfig::ConcurrencyLimit(c) => {
                let counts = keep(&previous.inflight, &mut state.inflight, name, c);
                Kind::ConcurrencyLimit(Box::new(
                    concurrency::ConcurrencyLimit::new(c, counts).map_err(at)?,
                ))
            }
        };
        let anonymous = match p.value.anonymous() {
            None => None,
            Some(a) => Some(Arc::clone(consumers.by_name.get(a).ok_or_else(|| {
                at(format!("anonymous consumer `{a}` is not defined"))
            })?)),
        };
        policies.insert(
            name.clone(),
            Arc::new(Policy {
                name: name.as_str().into(),
                kind,
                anonymous,
            }),
        );
    }
    Ok(Compiled { policies, state })
}

/// A policy's counters from the previous configuration when its settings are unchanged, fresh
/// ones otherwise; recorded in `next` for the reload after.
fn keep<C: PartialEq + Clone, T: Default>(
    previous: &HashMap<String, (C, Arc<T>)>,
    next: &mut HashMap<String, (C, Arc<T>)>,
    name: &str,
    config: &C,
) -> Arc<T> {
    let kept = previous
        .get(name)
        .filter(|(c, _)| c == config)
        .map_or_else(Arc::default, |(_, t)| Arc::clone(t));
    next.insert(name.to_string(), (config.clone(), Arc::clone(&kept)));
    kept
}

/// What the chain found out about a request.
#[derive(Default)]
pub struct Verdict {
    /// Some auth policy accepted the request (possibly as its anonymous consumer).
    pub authenticated: bool,
    /// The consumer is the anonymous fallback: no credential was presented.
    pub anonymous: bool,
    pub identity: Identity,
    /// The credential to strip before proxying, unless the policy forwards it.
    pub strip: Option<Found>,
    /// The tightest rate limit the request passed, for its response headers.
    pub limit: Option<LimitStatus>,
    /// A rate limit delayed the request before admitting it.
    pub throttled: bool,
    /// Concurrency slots held until the request ends.
    pub slots: Vec<concurrency::Slot>,
}

/// Which metric a refusal counts in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Counter {
    /// `pylon_auth_failures_total{route,policy,reason}`
    Auth,
    /// `pylon_rate_limited_total{route,policy}`
    RateLimited,
}

/// A refusal: the error to send with its headers, the policy and reason for metrics and logs.
pub struct Rejection {
    pub error: GatewayError,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub policy: Arc<str>,
    pub reason: &'static str,
    pub counter: Counter,
}

impl Rejection {
    fn new(error: GatewayError, policy: &Policy, reason: &'static str) -> Rejection {
        Rejection {
            error,
            headers: Vec::new(),
            policy: Arc::clone(&policy.name),
            reason,
            counter: Counter::Auth,
        }
    }

    fn rate_limited(
        error: GatewayError,
        policy: &Policy,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Rejection {
        Rejection {
            error,
            headers,
            policy: Arc::clone(&policy.name),
            reason: "rate_limited",
            counter: Counter::RateLimited,
        }
    }

    fn unauthorized(policy: &Policy, reason: &'static str) -> Rejection {
        let mut r = Rejection::new(error::UNAUTHORIZED, policy, reason);
        r.headers
            .push((http::header::WWW_AUTHENTICATE, policy.challenge(reason)));
        r
    }
}

/// A route's policies, in order.
#[derive(Default)]
pub struct Chain {
    policies: Box<[Arc<Policy>]>,
    /// Headers the chain's JWT policies set from claims: never taken from the client.
    pub claim_headers: Box<[HeaderName]>,
    /// `RateLimit-Policy`: every rate limit of the chain, built once.
    pub rate_limit_policy: Option<HeaderValue>,
}

impl Chain {
    pub fn new(mut policies: Vec<Arc<Policy>>) -> Chain {
        // Auth first, each group in its written order (the sort is stable).
        policies.sort_by_key(|p| !p.is_auth());
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for p in &policies {
            if let Kind::Jwt(j) = &p.kind {
                claim_headers.extend(j.claim_headers.iter().map(|(_, h)| h.clone()));
            }
        }
        claim_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        claim_headers.dedup();
        let items: Vec<String> = policies
            .iter()
            .filter_map(|p| match &p.kind {
                Kind::RateLimit(r) => Some(r.policy_item()),
                _ => None,
            })
            .collect();
        Chain {
            policies: policies.into(),
            claim_headers: claim_headers.into(),
            rate_limit_policy: (!items.is_empty())
                .then(|| HeaderValue::from_str(&items.join(", ")).ok())
                .flatten(),
        }
    }

    /// Rate-limit headers for a response, when the route has rate limits.
    pub fn limit_headers(
        &self,
        status: &LimitStatus,
        retry_after: Option<std::time::Duration>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        match &self.rate_limit_policy {
            Some(policy) => status.headers(policy, retry_after),
            None => Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub async fn run(
        &self,
        req: &pingora::http::RequestHeader,
        facts: &Facts<'_>,
    ) -> Result<Verdict, Rejection> {
        let mut verdict = Verdict::default();
        // The first auth policy that found no credential, for the 401 or its anonymous consumer.
        let mut missing: Option<&Arc<Policy>> = None;
        let auth = self.policies.iter().take_while(|p| p.is_auth());
        for policy in auth {
            let Some((auth, found)) = policy.authenticate(req).await else {
                if missing.is_none_or(|m| m.anonymous.is_none() && policy.anonymous.is_some()) {
                    missing = Some(policy);
                }
                continue;
            };
            match auth {
                Auth::Granted(identity) => {
                    verdict.authenticated = true;
                    verdict.identity = identity;
                    verdict.strip = found;
                    break;
                }
                Auth::Refused(reason) => return Err(Rejection::unauthorized(policy, reason)),
                Auth::Forbidden(reason) => {
                    return Err(Rejection::new(error::FORBIDDEN, policy, reason))
                }
                Auth::Busy => {
                    let mut r = Rejection::new(error::TOO_MANY_REQUESTS, policy, "busy");
                    r.headers
                        .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
                    return Err(r);
                }
            }
        }
        if !verdict.authenticated {
            if let Some(p) = missing {
                settle_missing(p, &mut verdict)?;
            }
        }
        // Limits count an anonymous consumer by client address, not as one shared client.
        let consumer = if verdict.anonymous {
            None
        } else {
            verdict.identity.consumer.clone()
        };
        for policy in self.policies.iter().skip_while(|p| p.is_auth()) {
            match &policy.kind {
                Kind::Acl(acl) => match &verdict.identity.consumer {
                    Some(c) if acl.permits(c) => {}
                    Some(_) => return Err(Rejection::new(error::FORBIDDEN, policy, "acl_denied")),
                    None if verdict.authenticated => {
                        return Err(Rejection::new(error::FORBIDDEN, policy, "no_consumer"))
                    }
                    None => return Err(Rejection::unauthorized(policy, "no_consumer")),
                },
                Kind::RateLimit(limit) => {
                    let outcome = match limit.check(req, facts, consumer.as_deref()).await {
                        Checked::Admitted(o) => Some(o),
                        Checked::Throttled(o) => {
                            verdict.throttled = true;
                            Some(o)
                        }
                        Checked::Refused(o) => {
                            let status = LimitStatus::new(limit, &o);
                            let headers = self.limit_headers(&status, Some(o.retry_after));
                            return Err(Rejection::rate_limited(
                                error::TOO_MANY_REQUESTS,
                                policy,
                                headers,
                            ));
                        }
                        Checked::StoreFailed { admit: true } => None,
                        Checked::StoreFailed { admit: false } => {
                            let mut r =
                                Rejection::rate_limited(error::TOO_MANY_REQUESTS, policy, vec![]);
                            r.headers
                                .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
                            return Err(r);
                        }
                    };
                    if let Some(o) = outcome {
                        if verdict
                            .limit
                            .as_ref()
                            .is_none_or(|l| o.remaining < l.remaining)
                        {
                            verdict.limit = Some(LimitStatus::new(limit, &o));
                        }
                    }
                }
                Kind::ConcurrencyLimit(limit) => {
                    match limit.acquire(req, facts, consumer.as_deref()) {
                        Some(slot) => verdict.slots.push(slot),
                        None => {
                            let mut r = Rejection::rate_limited(limit.error, policy, vec![]);
                            r.headers
                                .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
                            return Err(r);
                        }
                    }
                }
                Kind::ApiKey(_) | Kind::BasicAuth(_) | Kind::Jwt(_) => {}
            }
        }
        Ok(verdict)
    }
}

/// No auth policy found a credential: the anonymous consumer if one is set, else 401.
fn settle_missing(policy: &Policy, verdict: &mut Verdict) -> Result<(), Rejection> {
    match &policy.anonymous {
        Some(c) => {
            verdict.authenticated = true;
            verdict.anonymous = true;
            verdict.identity.consumer = Some(Arc::clone(c));
            Ok(())
        }
        None => Err(Rejection::unauthorized(policy, "missing_credentials")),
    }
}
