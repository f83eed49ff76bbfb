//! Aggregation routes: one request, several backend calls made at once, one JSON answer.
//!
//! Each part goes to its upstream through the same selection, health, breakers, in-flight cap,
//! retry budget and peer timeouts as a proxied request (`upstream::call`); its path is compiled at
//! load with `{jwt.*}`, `{path.*}` and `{query.*}` (`path.rs`). Parts run concurrently, each
//! within its own `timeout` and all within the aggregate's. The answer is an object with each
//! part's JSON under its key. A failed optional part is `null` there, named in `"_errors"`, and
//! the answer says `x-pylon-partial: true`; a failed required part fails the request (502, 504
//! when it timed out, 503 when its upstream had no target, 400 when the request lacks a value
//! its path needs).
//!
//! The client's side is any route's: authentication, limits and transforms run around it, and
//! every part request gets what a proxied request gets (request id, trace context, consumer,
//! forwarding headers) and the route's upstream-request filters (credentials stripped, claim
//! headers, request transforms).

mod path;

use crate::config::{AggregateConfig, Config, ConfigError, Located, PathSpec, RouteConfig};
use crate::error;
use crate::filter::{Body, Chain, Context, Phases, Reply};
use crate::plumbing;
use crate::upstream::call::{self, Call, Failure};
use crate::upstream::{Attempts, Replay, Upstream};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use path::{PartPath, Values};
use pingora::http::RequestHeader;
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const PARTIAL: HeaderName = HeaderName::from_static("x-pylon-partial");

pub struct Aggregate {
    parts: Box<[Part]>,
    timeout: Duration,
    max_body: usize,
    /// The route's path regexes, for `{path.<name>}`.
    regexes: Box<[Regex]>,
}

struct Part {
    key: String,
    upstream: Arc<Upstream>,
    path: PartPath,
    optional: bool,
    timeout: Option<Duration>,
    forward: Box<[HeaderName]>,
}

fn regexes(route: &RouteConfig) -> Vec<Regex> {
    route
        .paths
        .iter()
        .filter_map(|p| match p.get_ref() {
            PathSpec::Regex(re) => re.regex().ok().cloned(),
            _ => None,
        })
        .collect()
}

fn header_names(names: &[String]) -> Result<Box<[HeaderName]>, String> {
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{n:?} is not a header name"))
        })
        .collect()
}

/// Every error of a route's `aggregate`, at its place: the file check (`pylon -t`).
pub fn check(config: &Config, route: &Located<RouteConfig>, errors: &mut Vec<ConfigError>) {
    let Some(agg) = &route.aggregate else {
        return;
    };
    let name = route.name.get_ref();
    let groups = path::groups(&regexes(route));
    if agg.get_ref().parts.is_empty() {
        errors.push(ConfigError::at(
            agg.span(),
            format!("route `{name}`: `aggregate` has no parts"),
        ));
    }
    if let Err(e) = header_names(&agg.get_ref().forward_headers) {
        errors.push(ConfigError::at(
            agg.span(),
            format!("route `{name}`: `forward_headers`: {e}"),
        ));
    }
    let mut keys: Vec<&str> = Vec::new();
    for p in &agg.get_ref().parts {
        let key = p.key.get_ref();
        if key == "_errors" || keys.contains(&key.as_str()) {
            errors.push(ConfigError::at(
                p.key.span(),
                format!("route `{name}`: part key `{key}` is reserved or used twice"),
            ));
        }
        keys.push(key);
        if !config.upstreams.contains_key(p.upstream.get_ref()) {
            errors.push(ConfigError::at(
                p.upstream.span(),
                format!(
                    "route `{name}`: part `{key}` names unknown upstream `{}`",
                    p.upstream.get_ref()
                ),
            ));
        }
        if let Err(e) = PartPath::parse(p.path.get_ref(), &groups) {
            errors.push(ConfigError::at(
                p.path.span(),
                format!("route `{name}`: part `{key}`: {e}"),
            ));
        }
        if let Some(Err(e)) = p.forward_headers.as_deref().map(header_names) {
            errors.push(ConfigError::at(
                p.key.span(),
                format!("route `{name}`: part `{key}`: {e}"),
            ));
        }
    }
}

impl Aggregate {
    pub fn compile(
        route: &RouteConfig,
        config: &AggregateConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
    ) -> Result<Aggregate, String> {
        let regexes = regexes(route);
        let groups = path::groups(&regexes);
        let shared = header_names(&config.forward_headers)?;
        let parts = config
            .parts
            .iter()
            .map(|p| {
                Ok(Part {
                    key: p.key.get_ref().clone(),
                    upstream: upstreams
                        .get(p.upstream.get_ref())
                        .cloned()
                        .ok_or_else(|| format!("unknown upstream `{}`", p.upstream.get_ref()))?,
                    path: PartPath::parse(p.path.get_ref(), &groups)?,
                    optional: p.optional,
                    timeout: p.timeout.map(|t| t.0),
                    forward: match &p.forward_headers {
                        Some(names) => header_names(names)?,
                        None => shared.clone(),
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Aggregate {
            parts,
            timeout: config.timeout.0,
            max_body: config.max_body.bytes(),
            regexes: regexes.into(),
        })
    }

    /// The part's request for this client request, or why it cannot be made.
    fn request(
        &self,
        part: &Part,
        client: &RequestHeader,
        chain: &Chain,
        cx: &mut Context,
        path: &str,
    ) -> Result<RequestHeader, Failure> {
        let values = Values {
            jwt: cx.identity.jwt.as_deref(),
            path: self.regexes.iter().find_map(|r| r.captures(path)),
            query: client.uri.query().unwrap_or(""),
        };
        let target = part
            .path
            .render(&values)
            .map_err(|_| Failure::MissingValue)?;
        let mut req = RequestHeader::build("GET", target.as_bytes(), None)
            .map_err(|_| Failure::MissingValue)?;
        for name in part.forward.iter() {
            for v in client.headers.get_all(name) {
                let _ = req.append_header(name.clone(), v.clone());
            }
        }
        plumbing::prepare_upstream(&mut req, client, cx, None).map_err(|_| Failure::BadResponse)?;
        if chain.has(Phases::UPSTREAM_REQUEST) {
            chain
                .upstream_request(&mut req, cx)
                .map_err(|_| Failure::BadResponse)?;
        }
        Ok(req)
    }

    /// Make every part's call and merge the answers. `chain` is the route's (its
    /// upstream-request phase edits each part's request); `path` the client's path as routed.
    pub async fn run(
        &self,
        client: &RequestHeader,
        chain: &Chain,
        cx: &mut Context,
        path: &str,
    ) -> Reply {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let requests: Vec<_> = self
            .parts
            .iter()
            .map(|p| self.request(p, client, chain, cx, path))
            .collect();
        let calls = self
            .parts
            .iter()
            .zip(requests)
            .map(|(part, req)| async move {
                let req = req?;
                let until = part.timeout.map_or(deadline, |t| deadline.min(start + t));
                let call = Call {
                    req: &req,
                    body: Bytes::new(),
                    max_body: self.max_body,
                    // A part is a GET: safe to send again wherever the proxy would.
                    replay: Replay::ALWAYS,
                    grpc: false,
                };
                let mut attempts = Attempts::default();
                let answer = call::call(&part.upstream, call, &mut attempts, Some(until)).await?;
                let status = answer.header.status.as_u16();
                if !(200..300).contains(&status) {
                    return Err(Failure::Status(status));
                }
                let body = answer.body;
                match body.is_empty() {
                    true => Ok(Value::Null),
                    false => serde_json::from_slice(&body).map_err(|_| Failure::NotJson),
                }
            });
        let results = futures::future::join_all(calls).await;
        let mut merged = Map::with_capacity(self.parts.len() + 1);
        let mut failed = Vec::new();
        for (part, result) in self.parts.iter().zip(results) {
            match result {
                Ok(v) => {
                    merged.insert(part.key.clone(), v);
                }
                Err(why) if part.optional => {
                    merged.insert(part.key.clone(), Value::Null);
                    failed.push(serde_json::json!({"part": part.key, "error": why.code()}));
                }
                Err(why) => {
                    return Reply::error(match why {
                        Failure::Timeout => error::UPSTREAM_TIMEOUT,
                        Failure::Unavailable => error::UPSTREAM_UNAVAILABLE,
                        Failure::MissingValue => error::BAD_REQUEST,
                        _ => error::BAD_GATEWAY,
                    })
                }
            }
        }
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        if !failed.is_empty() {
            merged.insert("_errors".into(), Value::Array(failed));
            headers.push((PARTIAL, HeaderValue::from_static("true")));
        }
        let body = serde_json::to_vec(&Value::Object(merged)).unwrap_or_default();
        Reply {
            status: 200,
            body: Body::Composed(Bytes::from(body)),
            headers,
        }
    }
}
