//! A compiled route: what to do with a request once it matched.

use crate::aggregate::Aggregate;
use crate::config::RouteConfig;
use crate::filter::{Body, Chain, Reply};
use crate::grpc::{self, Code};
use crate::metrics::RouteMetrics;
use crate::mirror::Mirror;
use crate::policy::{self, Compiled};
use crate::split::Split;
use crate::state::Keeper;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Route {
    pub name: Arc<str>,
    pub metrics: Arc<RouteMetrics>,
    /// Global policies, then the route's own, compiled into phases.
    pub chain: Chain,
    pub action: Action,
    pub strip_prefix: bool,
    pub rewrite: Option<Rewrite>,
    pub preserve_host: bool,
    /// The whole request's deadline (`timeout`).
    pub timeout: Option<std::time::Duration>,
    /// Empty: any method.
    pub(super) methods: Box<[Method]>,
    /// `methods` as an `Allow` value, for a 405.
    pub(super) allow: Option<HeaderValue>,
    pub(super) headers: Box<[(HeaderName, HeaderValue)]>,
    pub(super) priority: i32,
    /// The answer when no target can take the request (`fallback`).
    fallback: Option<Fallback>,
    /// A sampled copy of each request to a shadow upstream.
    pub mirror: Option<Arc<Mirror>>,
}

pub enum Action {
    Upstream(Arc<Upstream>),
    /// Weighted backends, each a pool; one is picked per request.
    Split(Arc<Split>),
    Respond(Responder),
    Aggregate(Aggregate),
}

/// A fixed answer, prepared at load.
pub struct Responder {
    pub status: u16,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    pub body: Bytes,
}

impl Responder {
    pub fn reply(&self) -> Reply {
        Reply {
            status: self.status,
            body: Body::Fixed(self.body.clone()),
            headers: self.headers.to_vec(),
        }
    }
}

/// A route's `fallback`: a fixed answer, or a gRPC status and message for a gRPC call.
struct Fallback {
    http: Responder,
    grpc: (Code, HeaderValue),
}

/// How a request's path matched its route.
#[derive(Default)]
pub struct Matched {
    /// The routed path when normalization changed it; it is also what goes upstream.
    pub normalized: Option<String>,
    /// Bytes of the (normalized) path the route's pattern covered, for `strip_prefix`.
    pub len: usize,
}

/// `rewrite = { pattern, to }`: a regex replacement over the upstream path.
pub struct Rewrite {
    pub pattern: regex::Regex,
    pub to: String,
}

impl Rewrite {
    pub fn apply<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        self.pattern.replace(path, self.to.as_str())
    }
}

/// What a route gets when its policies do not say otherwise.
pub struct RouteDefaults<'a> {
    /// The request limits of a route without a `request_limits` policy; `None` when a global
    /// policy sets them for every route.
    pub limits: Option<&'a Compiled>,
    /// Whether a policy name is a `request_limits` policy.
    pub is_limits: &'a dyn Fn(&str) -> bool,
}

impl Route {
    pub fn compile(
        config: &RouteConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        policies: &HashMap<String, Compiled>,
        global: &[&Compiled],
        consumers: usize,
        defaults: &RouteDefaults<'_>,
        keeper: &mut Keeper<'_>,
    ) -> Result<Route, String> {
        let name = config.name.get_ref();
        let action = match (&config.upstream, &config.respond, &config.aggregate) {
            _ if config.split.is_some() => Action::Split(Arc::new(
                Split::compile(name, config, upstreams, keeper)
                    .map_err(|e| format!("route `{name}`: {e}"))?,
            )),
            (None, None, Some(agg)) => Action::Aggregate(
                Aggregate::compile(config, agg.get_ref(), upstreams)
                    .map_err(|e| format!("route `{name}`: {e}"))?,
            ),
            (Some(up), None, None) => Action::Upstream(
                upstreams
                    .get(up.get_ref())
                    .cloned()
                    .ok_or_else(|| format!("route `{name}`: unknown upstream"))?,
            ),
            (None, Some(r), None) => Action::Respond(Responder {
                status: *r.status.get_ref(),
                headers: header_pairs(&r.headers)?,
                body: Bytes::from(r.body.clone()),
            }),
            _ => return Err(format!("route `{name}` needs exactly one action")),
        };
        let rewrite = match &config.rewrite {
            Some(rw) => Some(Rewrite {
                pattern: rw.pattern.get_ref().regex()?.clone(),
                to: rw.to.get_ref().clone(),
            }),
            None => None,
        };
        let methods: Box<[Method]> = config
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.get_ref().as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let mut chain = global.to_vec();
        let own_limits = config
            .policies
            .iter()
            .any(|p| (defaults.is_limits)(p.get_ref()));
        if let (Some(limits), false) = (defaults.limits, own_limits) {
            chain.push(limits);
        }
        for p in &config.policies {
            let policy = policies
                .get(p.get_ref())
                .ok_or_else(|| format!("route `{name}`: unknown policy `{}`", p.get_ref()))?;
            chain.push(policy);
        }
        let allow = (!methods.is_empty())
            .then(|| {
                let list: Vec<&str> = methods.iter().map(Method::as_str).collect();
                HeaderValue::from_str(&list.join(", ")).ok()
            })
            .flatten();
        let mirror = match &config.mirror {
            Some(m) => Some(Arc::new(
                Mirror::compile(name, m.get_ref(), upstreams)
                    .map_err(|e| format!("route `{name}`: {e}"))?,
            )),
            None => None,
        };
        Ok(Route {
            mirror,
            name: name.as_str().into(),
            metrics: Arc::new(RouteMetrics::new(name, consumers)),
            chain: policy::chain(&chain),
            action,
            strip_prefix: config.strip_prefix,
            rewrite,
            preserve_host: config.preserve_host,
            timeout: config.timeout.map(|t| t.0),
            methods,
            allow,
            headers: header_pairs(&config.headers)?,
            priority: config.priority,
            fallback: match &config.fallback {
                Some(f) => {
                    let mut headers = header_pairs(&f.headers)?.into_vec();
                    if let Some(ct) = &f.content_type {
                        let value = HeaderValue::from_str(ct).map_err(|e| e.to_string())?;
                        headers.push((http::header::CONTENT_TYPE, value));
                    }
                    let status = *f.status.get_ref();
                    let code = f
                        .grpc_status
                        .as_ref()
                        .and_then(|c| Code::named(c.get_ref()));
                    let message = f.grpc_message.as_deref().unwrap_or(&f.body);
                    Some(Fallback {
                        http: Responder {
                            status,
                            headers: headers.into(),
                            body: Bytes::from(f.body.clone()),
                        },
                        grpc: (
                            code.unwrap_or(Code::of_http(status)),
                            grpc::message(message),
                        ),
                    })
                }
                None => None,
            },
        })
    }

    /// What the client gets when the upstream cannot take its request: the route's
    /// `fallback`, else `503 upstream_unavailable`. `grpc`: the request is a gRPC call.
    pub fn unavailable(&self, grpc: bool) -> Reply {
        self.fallback(grpc)
            .unwrap_or_else(|| Reply::error(crate::error::UPSTREAM_UNAVAILABLE))
    }

    /// The `fallback` for a request whose last attempt could not connect, if the route has one.
    pub fn fallback(&self, grpc: bool) -> Option<Reply> {
        let f = self.fallback.as_ref()?;
        Some(match grpc {
            false => f.http.reply(),
            true => Reply {
                status: f.http.status,
                body: Body::Grpc(f.grpc.0, f.grpc.1.clone()),
                headers: Vec::new(),
            },
        })
    }

    /// The request's headers carry every value this route requires.
    pub(super) fn headers_match(&self, headers: &http::HeaderMap) -> bool {
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }

    pub(super) fn method_matches(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// The upstream path: the normalized path, less the matched prefix with `strip_prefix`,
    /// through `rewrite`. Left as it is when none of these apply.
    pub fn rewrite_uri(&self, req: &mut RequestHeader, matched: &Matched) -> Result<()> {
        if !self.strip_prefix && self.rewrite.is_none() && matched.normalized.is_none() {
            return Ok(());
        }
        let uri = &req.uri;
        let mut path = Cow::Borrowed(matched.normalized.as_deref().unwrap_or(uri.path()));
        if self.strip_prefix {
            let rest = path.get(matched.len..).unwrap_or("");
            path = Cow::Owned(if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            });
        }
        if let Some(rw) = &self.rewrite {
            path = Cow::Owned(rw.apply(&path).into_owned());
        }
        let new = match uri.query().filter(|q| !q.is_empty()) {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let uri = http::Uri::try_from(new).or_err(
            ErrorType::InternalError,
            "rewritten path is not a valid URI",
        )?;
        req.set_uri(uri);
        Ok(())
    }
}

impl Route {
    /// The route's split, if it has one.
    pub fn split(&self) -> Option<&Arc<Split>> {
        match &self.action {
            Action::Split(s) => Some(s),
            _ => None,
        }
    }
}

fn header_pairs(
    map: &std::collections::BTreeMap<String, String>,
) -> Result<Box<[(HeaderName, HeaderValue)]>, String> {
    map.iter()
        .map(|(k, v)| {
            Ok((
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}"))?,
                HeaderValue::from_str(v).map_err(|e| format!("{k}: {e}"))?,
            ))
        })
        .collect()
}
