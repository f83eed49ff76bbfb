//! `ext_authz`: each request is put to an HTTP authorization service (Envoy's ext_authz,
//! Traefik's forwardAuth), which allows or denies it.
//!
//! The check is a request to the policy's `upstream` (so its health checks, breakers, retries
//! and peer timeouts apply, within `timeout`) at `path`, with the request's method, the chosen
//! `headers`, and `x-forwarded-method`, `x-forwarded-uri`, `x-forwarded-host`,
//! `x-forwarded-for`; with `max_body` above 0, the body too (read before the request goes
//! upstream; a larger one is refused with 413). A 2xx allows: the answer's `upstream_headers`
//! go to the upstream request (the client's own values of those names are always removed),
//! and its `consumer_header` names the consumer (a configured one, with its groups, or a new
//! one of that name). 401 and 403 deny with that status, other 4xx with 403: the contract's
//! JSON error with a 401's `WWW-Authenticate`, or with `pass_body` the service's own body. A
//! service that cannot answer (no target, timeout, 5xx) denies with 503, or lets the request
//! through unauthenticated with `on_error = "allow"`. Decisions are remembered for `cache_ttl`
//! under a keyed digest of the method, the path and the chosen headers (never with a body).

use super::verified::{self, Verified};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfSize, ConfTimeout, ConfigError};
use crate::consumer::{Consumer, Identity};
use crate::error;
use crate::filter::{gather_body, Body, Context, Filter, Phases, Reply};
use crate::upstream::call::{self, Call};
use crate::upstream::{Attempts, Replay, Upstream};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const KIND: Kind = Kind {
    name: "ext_authz",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// The authorization service's pool.
    pub upstream: String,
    /// Where on it the checks go.
    #[serde(default = "default_path")]
    pub path: String,
    /// Request headers sent along.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// Headers of an allowing answer sent to the upstream.
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// The header of an allowing answer that names the consumer.
    pub consumer_header: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: ConfTimeout,
    /// `deny` (503) or `allow` when the service cannot answer.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// How long a decision is remembered; 0: not at all.
    #[serde(default = "zero")]
    pub cache_ttl: ConfDuration,
    /// A denial carries the service's own body instead of the gateway's error.
    #[serde(default)]
    pub pass_body: bool,
    /// The most of the request body sent along; 0: none.
    #[serde(default = "no_body")]
    pub max_body: ConfSize,
}

fn default_path() -> String {
    "/".into()
}
fn default_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_timeout() -> ConfTimeout {
    ConfTimeout(Duration::from_millis(500))
}
fn default_on_error() -> String {
    "deny".into()
}
fn zero() -> ConfDuration {
    ConfDuration(Duration::ZERO)
}
fn no_body() -> ConfSize {
    ConfSize(0)
}

/// The most of a service's answer read (its body is passed on with `pass_body`).
const ANSWER_BODY: usize = 64 << 10;

struct ExtAuthzSpec {
    config: ExtAuthzConfig,
    headers: Box<[HeaderName]>,
    upstream_headers: Box<[HeaderName]>,
    consumer_header: Option<HeaderName>,
}

fn names(list: &[String], key: &str) -> Result<Box<[HeaderName]>, String> {
    list.iter()
        .map(|h| {
            HeaderName::try_from(h.as_str())
                .map_err(|_| format!("`{key}`: `{h}` is not a header name"))
        })
        .collect()
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: ExtAuthzConfig = src.settings()?;
    let bad = |m: String| vec![src.place.error(&m)];
    if config.on_error != "deny" && config.on_error != "allow" {
        return Err(bad("`on_error` is \"deny\" or \"allow\"".into()));
    }
    if !config.path.starts_with('/') || config.path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(bad("`path` starts with `/`".into()));
    }
    let headers = names(&config.headers, "headers").map_err(bad)?;
    let upstream_headers = names(&config.upstream_headers, "upstream_headers").map_err(bad)?;
    let consumer_header = match &config.consumer_header {
        Some(h) => Some(names(std::slice::from_ref(h), "consumer_header").map_err(bad)?[0].clone()),
        None => None,
    };
    Ok(Arc::new(ExtAuthzSpec {
        config,
        headers,
        upstream_headers,
        consumer_header,
    }))
}

impl Spec for ExtAuthzSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let c = &self.config;
        let upstream = cx
            .upstreams
            .get(&c.upstream)
            .cloned()
            .ok_or_else(|| format!("`upstream`: no upstream `{}`", c.upstream))?;
        let consumers = cx
            .config
            .consumers
            .keys()
            .map(|n| Ok((n.clone(), cx.consumer(n)?)))
            .collect::<Result<_, String>>()?;
        // Decisions survive a reload that leaves the policy as it was.
        let settings = serde_json::to_string(c).map_err(|e| e.to_string())?;
        let cache = cx.keeper.keep("ext_authz", cx.name, settings, || {
            Ok::<_, String>(Verified::new(100_000))
        })?;
        Ok(Compiled::Filter(Arc::new(ExtAuthz {
            name: cx.name.into(),
            upstream,
            path: c.path.clone(),
            headers: self.headers.clone(),
            upstream_headers: self.upstream_headers.clone(),
            consumer_header: self.consumer_header.clone(),
            timeout: c.timeout.0,
            allow_on_error: c.on_error == "allow",
            cache_ttl: c.cache_ttl.0,
            cache,
            pass_body: c.pass_body,
            max_body: c.max_body.bytes(),
            consumers,
        })))
    }
}

/// What the service decided.
#[derive(Clone)]
enum Decision {
    Allow {
        headers: Arc<[(HeaderName, HeaderValue)]>,
        consumer: Option<Arc<Consumer>>,
    },
    Deny {
        status: u16,
        /// With `pass_body`: the service's body and content type.
        body: Option<(Bytes, Option<HeaderValue>)>,
        challenge: Option<HeaderValue>,
    },
}

/// The allowed request's headers for the upstream.
struct Allowed(Arc<[(HeaderName, HeaderValue)]>);

/// A check waiting for the request's body.
struct Pending {
    check: RequestHeader,
    body: BytesMut,
}

pub struct ExtAuthz {
    name: Arc<str>,
    upstream: Arc<Upstream>,
    path: String,
    headers: Box<[HeaderName]>,
    upstream_headers: Box<[HeaderName]>,
    consumer_header: Option<HeaderName>,
    timeout: Duration,
    allow_on_error: bool,
    cache_ttl: Duration,
    cache: Arc<Verified<Decision>>,
    pass_body: bool,
    max_body: usize,
    consumers: HashMap<String, Arc<Consumer>>,
}

impl ExtAuthz {
    /// The check to send for `req`.
    /// The check to send for `req`; `None` only if the request cannot be built (the path is
    /// checked at load), which is handled as the service being unreachable.
    fn check(&self, req: &RequestHeader, cx: &Context) -> Option<RequestHeader> {
        let mut check =
            RequestHeader::build(req.method.clone(), self.path.as_bytes(), None).ok()?;
        for name in self.headers.iter() {
            for value in req.headers.get_all(name) {
                let _ = check.append_header(name.clone(), value.clone());
            }
        }
        let target = String::from_utf8_lossy(req.raw_path()).into_owned();
        let forwarded = [
            ("x-forwarded-method", req.method.as_str().to_string()),
            ("x-forwarded-uri", target),
            (
                "x-forwarded-host",
                crate::headers::request_host(req)
                    .unwrap_or_default()
                    .to_string(),
            ),
            (
                "x-forwarded-for",
                cx.peek_client_ip(&req.headers).to_string(),
            ),
        ];
        for (name, value) in forwarded {
            if let Ok(value) = HeaderValue::from_str(&value) {
                let _ = check.insert_header(name, value);
            }
        }
        Some(check)
    }

    /// The key a decision is remembered by.
    fn key(&self, req: &RequestHeader) -> verified::CredentialDigest {
        let mut parts: Vec<&[u8]> = vec![req.method.as_str().as_bytes(), req.raw_path()];
        for name in self.headers.iter() {
            parts.push(name.as_str().as_bytes());
            for value in req.headers.get_all(name) {
                parts.push(value.as_bytes());
            }
        }
        verified::digest(&parts)
    }

    /// Ask the service; `None` when it could not answer.
    async fn ask(&self, mut check: RequestHeader, body: Bytes) -> Option<Decision> {
        if !body.is_empty() {
            let _ = check.insert_header(http::header::CONTENT_LENGTH, body.len());
        }
        let call = Call {
            req: &check,
            body,
            max_body: ANSWER_BODY,
            replay: Replay {
                idempotent: true,
                body_whole: true,
            },
            grpc: false,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = Attempts::default();
        let answer = call::call(&self.upstream, call, &mut attempts, Some(deadline))
            .await
            .ok()?;
        let status = answer.header.status.as_u16();
        let headers = &answer.header.headers;
        Some(match status {
            200..=299 => {
                let mut given = Vec::new();
                for name in self.upstream_headers.iter() {
                    for value in headers.get_all(name) {
                        given.push((name.clone(), value.clone()));
                    }
                }
                let consumer = self
                    .consumer_header
                    .as_ref()
                    .and_then(|h| headers.get(h)?.to_str().ok())
                    .filter(|name| !name.is_empty())
                    .map(|name| match self.consumers.get(name) {
                        Some(c) => Arc::clone(c),
                        None => Arc::new(Consumer::new(name, Vec::new())),
                    });
                Decision::Allow {
                    headers: given.into(),
                    consumer,
                }
            }
            500..=599 => return None,
            _ => Decision::Deny {
                status: if status == 401 { 401 } else { 403 },
                body: self.pass_body.then(|| {
                    let kind = headers.get(http::header::CONTENT_TYPE).cloned();
                    (answer.body.clone(), kind)
                }),
                challenge: headers.get(http::header::WWW_AUTHENTICATE).cloned(),
            },
        })
    }

    /// Let the request on, or the reply that ends it.
    fn apply(&self, decision: Option<Decision>, cx: &mut Context) -> Result<(), Reply> {
        let Some(decision) = decision else {
            super::auth::refused(cx, &self.name, "authz_unavailable");
            return match self.allow_on_error {
                true => Ok(()),
                false => Err(Reply::error(error::UPSTREAM_UNAVAILABLE)),
            };
        };
        match decision {
            Decision::Allow { headers, consumer } => {
                if let Some(consumer) = consumer {
                    let mut identity = Identity::of(consumer);
                    identity.authenticated = true;
                    cx.identity = identity;
                }
                cx.state.insert(Allowed(headers));
                Ok(())
            }
            Decision::Deny {
                status,
                body,
                challenge,
            } => {
                super::auth::refused(cx, &self.name, "authz_denied");
                let mut reply = match (status, body) {
                    (_, Some((body, kind))) => {
                        let mut reply = Reply {
                            status,
                            body: Body::Fixed(body),
                            headers: Vec::new(),
                        };
                        if let Some(kind) = kind {
                            reply = reply.with(http::header::CONTENT_TYPE, kind);
                        }
                        reply
                    }
                    (401, None) => Reply::error(error::UNAUTHORIZED),
                    _ => Reply::error(error::FORBIDDEN),
                };
                if status == 401 {
                    let challenge = challenge
                        .unwrap_or_else(|| HeaderValue::from_static("Bearer realm=\"pylon\""));
                    reply = reply.with(http::header::WWW_AUTHENTICATE, challenge);
                }
                Err(reply)
            }
        }
    }
}

#[async_trait]
impl Filter for ExtAuthz {
    fn phases(&self) -> Phases {
        match self.max_body {
            0 => Phases::REQUEST | Phases::UPSTREAM_REQUEST,
            _ => Phases::REQUEST | Phases::REQUEST_BODY | Phases::UPSTREAM_REQUEST,
        }
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let Some(check) = self.check(req, cx) else {
            return self.apply(None, cx);
        };
        if self.max_body > 0 {
            cx.state.insert(Pending {
                check,
                body: BytesMut::new(),
            });
            // Asked at the body's end; a request without one is asked now.
            let declared = req.headers.get(http::header::CONTENT_LENGTH);
            let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
            if chunked || declared.is_some_and(|v| v.as_bytes() != b"0") {
                return Ok(());
            }
            let Some(Pending { check, .. }) = cx.state.remove::<Pending>() else {
                return Ok(());
            };
            let decision = self.ask(check, Bytes::new()).await;
            return self.apply(decision, cx);
        }
        let caching = !self.cache_ttl.is_zero();
        let key = caching.then(|| self.key(req));
        if let Some(decision) = key.as_ref().and_then(|k| self.cache.get(k)) {
            return self.apply(Some(decision), cx);
        }
        let decision = self.ask(check, Bytes::new()).await;
        if let (Some(key), Some(decision)) = (key, &decision) {
            self.cache.put(key, decision.clone(), self.cache_ttl);
        }
        self.apply(decision, cx)
    }

    fn holds_body(&self) -> usize {
        match self.max_body {
            0 => 0,
            max => max + 1,
        }
    }

    async fn request_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(pending) = cx.state.get_mut::<Pending>() else {
            return Ok(());
        };
        gather_body(&mut pending.body, body, self.max_body)?;
        if !end {
            return Ok(());
        }
        let Some(Pending { check, body }) = cx.state.remove::<Pending>() else {
            return Ok(());
        };
        let decision = self.ask(check, body.freeze()).await;
        self.apply(decision, cx)
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &mut Context) -> pingora::Result<()> {
        let given = cx.state.get::<Allowed>().map(|a| Arc::clone(&a.0));
        let given = given.as_deref().unwrap_or_default();
        crate::headers::edit_request(req, given.len(), |h| {
            for name in self.upstream_headers.iter() {
                h.remove(name);
            }
            for (name, value) in given {
                h.try_append(name.clone(), value.clone())?;
            }
            Ok(())
        })
    }
}
