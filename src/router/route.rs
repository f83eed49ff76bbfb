//! A compiled route: what to do with a request once it matched.

use crate::config::RouteConfig;
use crate::metrics::RouteMetrics;
use crate::policy::{Chain, Policy};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Route {
    pub name: Arc<str>,
    pub metrics: Arc<RouteMetrics>,
    /// Global policies, then the route's own.
    pub policies: Chain,
    pub action: Action,
    pub strip_prefix: bool,
    pub rewrite: Option<Rewrite>,
    pub preserve_host: bool,
    /// Empty: any method.
    pub(super) methods: Box<[Method]>,
    pub(super) headers: Box<[(HeaderName, HeaderValue)]>,
    pub(super) priority: i32,
}

pub enum Action {
    Upstream(Arc<Upstream>),
    Respond(Responder),
}

/// A fixed answer, prepared at load.
pub struct Responder {
    pub status: u16,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    pub body: Bytes,
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

impl Route {
    pub fn compile(
        config: &RouteConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        policies: &HashMap<String, Arc<Policy>>,
        global: &[Arc<Policy>],
    ) -> Result<Route, String> {
        let name = config.name.get_ref();
        let action = match (&config.upstream, &config.respond) {
            (Some(up), None) => Action::Upstream(
                upstreams
                    .get(up.get_ref())
                    .cloned()
                    .ok_or_else(|| format!("route `{name}`: unknown upstream"))?,
            ),
            (None, Some(r)) => Action::Respond(Responder {
                status: *r.status.get_ref(),
                headers: header_pairs(&r.headers)?,
                body: Bytes::from(r.body.clone()),
            }),
            _ => return Err(format!("route `{name}` needs exactly one action")),
        };
        let rewrite = match &config.rewrite {
            Some(rw) => Some(Rewrite {
                pattern: regex::Regex::new(rw.pattern.get_ref()).map_err(|e| e.to_string())?,
                to: rw.to.get_ref().clone(),
            }),
            None => None,
        };
        let methods = config
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.get_ref().as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let mut chain = global.to_vec();
        for p in &config.policies {
            let policy = policies
                .get(p.get_ref())
                .ok_or_else(|| format!("route `{name}`: unknown policy `{}`", p.get_ref()))?;
            chain.push(Arc::clone(policy));
        }
        Ok(Route {
            name: name.as_str().into(),
            metrics: Arc::new(RouteMetrics::new(name)),
            policies: Chain::new(chain),
            action,
            strip_prefix: config.strip_prefix,
            rewrite,
            preserve_host: config.preserve_host,
            methods,
            headers: header_pairs(&config.headers)?,
            priority: config.priority,
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
