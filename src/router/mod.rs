//! The router, compiled at load: request host, path, method and headers to a [`Route`].
//!
//! Routes are indexed by host (exact names, `*.` wildcard suffixes, and routes for any host),
//! then by path: exact paths in a hash map, prefixes in a [`RadixTree`], regexes in one
//! [`regex::RegexSet`]. A lookup touches only the routes whose host and path could match, so
//! ten thousand routes cost about what ten do.
//!
//! Among the routes that match, the winner is the one with the highest priority; then the most
//! specific host (exact, then the longest wildcard, then any host); then the most specific path
//! (exact, then regex, then the longest prefix); then the most header conditions; then a method
//! list over none; then the first in the file.

pub mod explain;
mod normalize;
mod radix;
mod route;

pub use normalize::normalize_path;
pub use route::{Action, Matched, Responder, Rewrite, Route, RouteDefaults};

use crate::config::{ConfigError, Located, PathSpec, RouteConfig};
use crate::policy::Compiled;
use crate::state::Keeper;
use crate::upstream::Upstream;
use radix::RadixTree;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

/// Orders candidate routes: larger wins.
type Rank = (i32, u32, u32, usize, bool, Reverse<usize>);

const PATH_EXACT: u32 = 3 << 24;
const PATH_REGEX: u32 = 2 << 24;
const PATH_PREFIX: u32 = 1 << 24;
const HOST_EXACT: u32 = 1 << 24;

#[derive(Clone, Copy)]
struct Entry {
    route: usize,
    rank: Rank,
    /// For regex paths: the pattern's index in its bucket.
    regex: Option<usize>,
}

#[derive(Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Vec<Entry>>,
    prefixes: RadixTree<Vec<Entry>>,
    regexes: Vec<regex::Regex>,
    regex_entries: Vec<Entry>,
    regex_set: Option<regex::RegexSet>,
}

/// The outcome of a lookup.
pub enum Lookup<'a> {
    /// A route matched; `matched_len` is how many leading bytes of the path its pattern covered.
    Found {
        route: &'a Arc<Route>,
        matched_len: usize,
    },
    /// Some route matched host, path and headers, but none allows the method; `allow` lists
    /// the methods those routes take, for the `Allow` header.
    MethodNotAllowed {
        allow: http::HeaderValue,
    },
    NotFound,
}

#[derive(Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    exact_hosts: HashMap<Box<str>, PathIndex>,
    /// Keyed by the suffix after `*`, dot included: `*.example.com` is `.example.com`.
    wildcard_hosts: HashMap<Box<str>, PathIndex>,
    any_host: PathIndex,
}

impl Router {
    /// Compile validated routes; an error names the route it comes from.
    pub fn compile(
        configs: &[Located<RouteConfig>],
        upstreams: &HashMap<String, Arc<Upstream>>,
        policies: &HashMap<String, Compiled>,
        global: &[&Compiled],
        consumers: usize,
        defaults: &RouteDefaults<'_>,
        keeper: &mut Keeper<'_>,
    ) -> Result<Router, ConfigError> {
        let mut router = Router::default();
        for (order, config) in configs.iter().enumerate() {
            let route = Route::compile(
                config, upstreams, policies, global, consumers, defaults, keeper,
            )
            .map_err(|e| ConfigError::at(config.span.clone(), e))?;
            let base = (
                route.priority,
                route.headers.len(),
                !route.methods.is_empty(),
                Reverse(order),
            );
            router.routes.push(Arc::new(route));
            let hosts: Vec<Option<&str>> = if config.hosts.is_empty() {
                vec![None]
            } else {
                config
                    .hosts
                    .iter()
                    .map(|h| Some(h.get_ref().as_str()))
                    .collect()
            };
            for host in hosts {
                let (index, host_rank) = match host {
                    None => (&mut router.any_host, 0),
                    Some(h) => {
                        let h = h.to_ascii_lowercase();
                        match h.strip_prefix('*') {
                            Some(suffix) => (
                                router.wildcard_hosts.entry(suffix.into()).or_default(),
                                1 + suffix.len() as u32,
                            ),
                            None => (router.exact_hosts.entry(h.into()).or_default(), HOST_EXACT),
                        }
                    }
                };
                let rank = |path_rank| (base.0, host_rank, path_rank, base.1, base.2, base.3);
                let any = [toml::Spanned::new(0..0, PathSpec::Prefix(String::new()))];
                let paths = if config.paths.is_empty() {
                    &any[..]
                } else {
                    &config.paths[..]
                };
                for path in paths {
                    match path.get_ref() {
                        PathSpec::Exact(exact) => index
                            .exact
                            .entry(exact.as_str().into())
                            .or_default()
                            .push(Entry {
                                route: order,
                                rank: rank(PATH_EXACT),
                                regex: None,
                            }),
                        PathSpec::Regex(re) => {
                            index.regex_entries.push(Entry {
                                route: order,
                                rank: rank(PATH_REGEX),
                                regex: Some(index.regexes.len()),
                            });
                            let re = re
                                .regex()
                                .map_err(|e| ConfigError::at(path.span(), e.to_string()))?;
                            index.regexes.push(re.clone());
                        }
                        PathSpec::Prefix(prefix) => index
                            .prefixes
                            .entry(prefix.as_bytes(), Vec::new)
                            .push(Entry {
                                route: order,
                                rank: rank(PATH_PREFIX + prefix.len() as u32),
                                regex: None,
                            }),
                    }
                }
            }
        }
        for index in router
            .exact_hosts
            .values_mut()
            .chain(router.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut router.any_host))
        {
            if let Some(first) = index.regex_entries.first() {
                let set = regex::RegexSet::new(index.regexes.iter().map(|r| r.as_str())).map_err(
                    |e| {
                        let span = configs[first.route].span.clone();
                        ConfigError::at(
                            span,
                            format!("the path regexes of this host together: {e}"),
                        )
                    },
                )?;
                index.regex_set = Some(set);
            }
        }
        Ok(router)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Every route, in the file's order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// Route a request: its path normalized (dot segments, duplicate slashes), then
    /// [`Router::find`].
    pub fn route(&self, req: &pingora::http::RequestHeader) -> (Lookup<'_>, Matched) {
        let normalized = match normalize_path(req.uri.path()) {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        };
        let path = normalized.as_deref().unwrap_or(req.uri.path());
        let host = crate::headers::request_host(req);
        let lookup = self.find(host, path, &req.method, &req.headers);
        let len = match &lookup {
            Lookup::Found { matched_len, .. } => *matched_len,
            _ => 0,
        };
        (lookup, Matched { normalized, len })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Find the route for a request. `host` is the raw `Host` value (port and case allowed).
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Lookup<'_> {
        let mut best = Best::default();
        if let Some(host) = host.map(normalize_host) {
            if let Some(index) = self.exact_hosts.get(host.as_ref()) {
                self.visit(index, path, method, headers, &mut best);
            }
            if !self.wildcard_hosts.is_empty() {
                for (i, _) in host.match_indices('.') {
                    if let Some(index) = self.wildcard_hosts.get(&host[i..]) {
                        self.visit(index, path, method, headers, &mut best);
                    }
                }
            }
        }
        self.visit(&self.any_host, path, method, headers, &mut best);
        match best.entry {
            Some((entry, prefix_len)) => {
                let route = &self.routes[entry.route];
                let matched_len = match (entry.regex, prefix_len) {
                    (_, Some(n)) => n,
                    (Some(_), None) if !route.strip_prefix => 0,
                    (Some(re), None) => best
                        .regexes
                        .and_then(|rs| rs[re].find(path))
                        .filter(|m| m.start() == 0)
                        .map_or(0, |m| m.end()),
                    (None, None) => path.len(),
                };
                Lookup::Found { route, matched_len }
            }
            None if !best.refused.is_empty() => Lookup::MethodNotAllowed {
                allow: allow_header(&best.refused),
            },
            None => Lookup::NotFound,
        }
    }

    fn visit<'a>(
        &'a self,
        index: &'a PathIndex,
        path: &str,
        method: &http::Method,
        headers: &http::HeaderMap,
        best: &mut Best<'a>,
    ) {
        let mut consider = |entry: &Entry, prefix_len: Option<usize>, regexes| {
            if best.entry.is_some_and(|(b, _)| b.rank >= entry.rank) {
                return;
            }
            let route = &self.routes[entry.route];
            if !route.headers_match(headers) {
                return;
            }
            if !route.method_matches(method) {
                if !best.refused.iter().any(|r| std::ptr::eq(*r, &**route)) {
                    best.refused.push(route);
                }
                return;
            }
            best.entry = Some((*entry, prefix_len));
            best.regexes = regexes;
        };
        if let Some(entries) = index.exact.get(path) {
            entries.iter().for_each(|e| consider(e, None, None));
        }
        index.prefixes.prefixes_of(path.as_bytes(), |entries, len| {
            entries.iter().for_each(|e| consider(e, Some(len), None));
        });
        if let Some(set) = &index.regex_set {
            for i in set.matches(path).iter() {
                consider(&index.regex_entries[i], None, Some(&index.regexes));
            }
        }
    }
}

#[derive(Default)]
struct Best<'a> {
    entry: Option<(Entry, Option<usize>)>,
    regexes: Option<&'a [regex::Regex]>,
    /// Routes that matched all but the method.
    refused: Vec<&'a Route>,
}

/// The methods of the routes that refused a request's method, as one `Allow` value (built at
/// load when one route refused, the usual case).
fn allow_header(refused: &[&Route]) -> http::HeaderValue {
    if let [route] = refused {
        if let Some(allow) = &route.allow {
            return allow.clone();
        }
    }
    let mut methods: Vec<&str> = Vec::new();
    for m in refused.iter().flat_map(|r| r.methods.iter()) {
        if !methods.contains(&m.as_str()) {
            methods.push(m.as_str());
        }
    }
    http::HeaderValue::from_str(&methods.join(", "))
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// Lower-case the host and drop a port and a trailing dot, allocating only when needed.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;
    use http::{HeaderMap, Method};

    fn routes(src: &str) -> Router {
        #[derive(serde::Deserialize)]
        struct F {
            routes: Vec<RouteConfig>,
        }
        let f: F = toml::from_str(src).unwrap();
        let located: Vec<_> = f
            .routes
            .into_iter()
            .map(|value| Located { value, span: 0..0 })
            .collect();
        let defaults = RouteDefaults {
            limits: None,
            is_limits: &|_| false,
        };
        Router::compile(
            &located,
            &HashMap::new(),
            &HashMap::new(),
            &[],
            0,
            &defaults,
            &mut Keeper::new(None),
        )
        .unwrap()
    }

    fn name(r: &Router, host: &str, path: &str) -> String {
        name_m(r, host, path, Method::GET, &HeaderMap::new())
    }

    fn name_m(r: &Router, host: &str, path: &str, m: Method, h: &HeaderMap) -> String {
        match r.find(Some(host), path, &m, h) {
            Lookup::Found { route, .. } => route.name.to_string(),
            Lookup::MethodNotAllowed { allow } => format!("405 {}", allow.to_str().unwrap()),
            Lookup::NotFound => "404".into(),
        }
    }

    const R: &str = r#"
        [[routes]]
        name = "root"
        paths = ["/"]
        respond = {}
        [[routes]]
        name = "api"
        paths = ["/api"]
        respond = {}
        [[routes]]
        name = "orders"
        paths = ["/api/orders"]
        respond = {}
        [[routes]]
        name = "exact"
        paths = ["=/api/orders/special"]
        respond = {}
        [[routes]]
        name = "regex"
        paths = ["~^/api/orders/[0-9]+$"]
        respond = {}
        [[routes]]
        name = "host"
        hosts = ["api.example.com"]
        paths = ["/"]
        respond = {}
        [[routes]]
        name = "wild"
        hosts = ["*.example.org"]
        respond = {}
        [[routes]]
        name = "post"
        paths = ["/submit"]
        methods = ["POST"]
        respond = {}
        [[routes]]
        name = "v2"
        paths = ["/api"]
        headers = { "x-api-version" = "2" }
        respond = {}
        [[routes]]
        name = "prio"
        paths = ["/low"]
        priority = 10
        respond = {}
        [[routes]]
        name = "lowlonger"
        paths = ["/low/er"]
        respond = {}
    "#;

    #[test]
    fn precedence() {
        let r = routes(R);
        assert_eq!(name(&r, "x", "/"), "root");
        assert_eq!(name(&r, "x", "/api/x"), "api");
        assert_eq!(name(&r, "x", "/api/orders/abc"), "orders");
        assert_eq!(name(&r, "x", "/api/orders/special"), "exact");
        assert_eq!(name(&r, "x", "/api/orders/42"), "regex");
        assert_eq!(name(&r, "API.Example.com:8080", "/api/orders/42"), "host");
        assert_eq!(name(&r, "a.b.example.org", "/api"), "wild");
        assert_eq!(name(&r, "example.org", "/api"), "api");
        assert_eq!(name(&r, "x", "/low/er"), "prio");
    }

    #[test]
    fn methods_and_headers() {
        let r = routes(R);
        let h = HeaderMap::new();
        assert_eq!(name_m(&r, "x", "/submit", Method::POST, &h), "post");
        // "/" still matches any method, so a GET falls through to it.
        assert_eq!(name_m(&r, "x", "/submit", Method::GET, &h), "root");
        let mut v2 = HeaderMap::new();
        v2.insert("x-api-version", "2".parse().unwrap());
        assert_eq!(name_m(&r, "x", "/api/x", Method::GET, &v2), "v2");
        let only = routes(
            r#"
            [[routes]]
            name = "p"
            paths = ["/p"]
            methods = ["POST"]
            respond = {}
        "#,
        );
        assert_eq!(name_m(&only, "x", "/p", Method::GET, &h), "405 POST");
        let two = routes(
            r#"
            [[routes]]
            name = "p"
            paths = ["/p"]
            methods = ["POST", "PUT"]
            respond = {}
            [[routes]]
            name = "q"
            paths = ["/p"]
            methods = ["DELETE", "PUT"]
            respond = {}
        "#,
        );
        assert_eq!(
            name_m(&two, "x", "/p", Method::GET, &h),
            "405 POST, PUT, DELETE"
        );
        assert_eq!(name_m(&only, "x", "/q", Method::GET, &h), "404");
    }

    #[test]
    fn matched_len_for_strip_prefix() {
        let r = routes(
            r#"
            [[routes]]
            name = "a"
            paths = ["/svc", "~^/re/[a-z]+"]
            strip_prefix = true
            respond = {}
        "#,
        );
        let h = HeaderMap::new();
        let Lookup::Found { matched_len, .. } = r.find(None, "/svc/x", &Method::GET, &h) else {
            panic!()
        };
        assert_eq!(matched_len, 4);
        let Lookup::Found { matched_len, .. } = r.find(None, "/re/abc/x", &Method::GET, &h) else {
            panic!()
        };
        assert_eq!(matched_len, 7);
    }

    /// Lookups must not scan routes: 10,000 routes cost about what 10 do. A linear scan would be
    /// ~1000x slower; the bound is loose so a loaded machine cannot fail it.
    #[test]
    fn lookup_cost_does_not_grow_with_route_count() {
        fn many(n: usize) -> Router {
            let mut src = String::new();
            for i in 0..n {
                src.push_str(&format!(
                    "[[routes]]\nname = \"r{i}\"\nhosts = [\"h{}.example.com\"]\npaths = [\"/svc{i}/items\", \"=/exact{i}\"]\nrespond = {{}}\n",
                    i % 50
                ));
            }
            routes(&src)
        }
        fn cost(r: &Router, n: usize) -> std::time::Duration {
            let h = HeaderMap::new();
            let paths: Vec<(String, String)> = (0..1000)
                .map(|i| {
                    (
                        format!("h{}.example.com", i % 50),
                        format!("/svc{}/items/7", i % n),
                    )
                })
                .collect();
            let start = std::time::Instant::now();
            for _ in 0..20 {
                for (host, path) in &paths {
                    let found = r.find(Some(host), path, &Method::GET, &h);
                    std::hint::black_box(matches!(found, Lookup::Found { .. }));
                }
            }
            start.elapsed()
        }
        let (small, large) = (many(10), many(10_000));
        assert_eq!(large.len(), 10_000);
        let h = HeaderMap::new();
        assert!(matches!(
            large.find(Some("h7.example.com"), "/svc9957/items/1", &Method::GET, &h),
            Lookup::Found { route, .. } if &*route.name == "r9957"
        ));
        let (a, b) = (cost(&small, 10), cost(&large, 10_000));
        assert!(b < a * 20, "10 routes: {a:?}, 10,000 routes: {b:?}");
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM:80"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("a.b."), "a.b");
    }
}
