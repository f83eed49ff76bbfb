//! `pylon explain` and the admin's `GET /explain`: which route a request takes and why, the
//! routes that nearly took it and the rule that stopped each, the policy chain, the upstream
//! and the path it would be sent with.
//!
//! The answer comes from the router itself ([`Router::route`]), so it cannot disagree with
//! what the proxy does; the reasons are each route's rules (host, path, method, headers)
//! checked one by one against the request, as the router's index would.

use super::{normalize_host, normalize_path, Lookup, Router};
use crate::config::{Config, PathSpec, RouteConfig};
use http::{HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;
use serde_json::{json, Value};

/// The request to explain, as given on the command line or to the admin API.
pub struct Probe<'a> {
    pub method: &'a str,
    /// `http://host/path?query`, or a path (then a `Host` header may name the host).
    pub url: &'a str,
    /// `name: value` pairs.
    pub headers: &'a [String],
}

/// One rule of a route against the request: how it matched, or why it did not.
type Check = Result<String, String>;

fn host_rule(route: &RouteConfig, host: Option<&str>) -> Check {
    if route.hosts.is_empty() {
        return Ok("any host".into());
    }
    let wanted: Vec<&str> = route.hosts.iter().map(|h| h.get_ref().as_str()).collect();
    let Some(host) = host else {
        return Err(format!("no host; the route wants {wanted:?}"));
    };
    for pattern in &wanted {
        let pattern = pattern.to_ascii_lowercase();
        let hit = match pattern.strip_prefix('*') {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => host == pattern,
        };
        if hit {
            return Ok(format!("host {host} matches {pattern:?}"));
        }
    }
    Err(format!("host {host} is not one of {wanted:?}"))
}

fn path_rule(route: &RouteConfig, path: &str) -> Check {
    if route.paths.is_empty() {
        return Ok("any path".into());
    }
    let mut wanted = Vec::new();
    for spec in &route.paths {
        let (hit, said) = match spec.get_ref() {
            PathSpec::Exact(p) => (path == p, format!("exact {p:?}")),
            PathSpec::Prefix(p) => (path.starts_with(p.as_str()), format!("prefix {p:?}")),
            PathSpec::Regex(r) => (
                r.regex().is_ok_and(|re| re.is_match(path)),
                format!("regex {:?}", r.source()),
            ),
        };
        if hit {
            return Ok(format!("path {path} matches {said}"));
        }
        wanted.push(said);
    }
    Err(format!("path {path} matches none of {}", wanted.join(", ")))
}

fn method_rule(route: &RouteConfig, method: &Method) -> Check {
    let methods: Vec<&str> = route.methods.iter().map(|m| m.get_ref().as_str()).collect();
    match methods.is_empty()
        || methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method.as_str()))
    {
        true if methods.is_empty() => Ok("any method".into()),
        true => Ok(format!("method {method} is one of {methods:?}")),
        false => Err(format!("method {method} is not one of {methods:?}")),
    }
}

fn header_rule(route: &RouteConfig, headers: &http::HeaderMap) -> Check {
    if route.headers.is_empty() {
        return Ok("no header conditions".into());
    }
    for (name, value) in &route.headers {
        let found: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !found.contains(&value.as_str()) {
            return Err(match found.is_empty() {
                true => format!("header {name}: {value:?} wanted, absent"),
                false => format!("header {name}: {value:?} wanted, got {found:?}"),
            });
        }
    }
    Ok(format!("headers {:?} all present", route.headers))
}

/// The rules in the order they are checked.
const PATH: usize = 1;

/// How near a route that failed only `rule` came: lower is nearer.
fn closeness(rule: usize) -> u8 {
    match rule {
        2 | 3 => 0,
        0 => 1,
        _ => 2,
    }
}

/// Whether one of the route's exact or prefix paths begins with the request path's first
/// segment (`/v1/` of `/v1/users`): a path miss that is near rather than another service's.
fn same_first_segment(route: &RouteConfig, path: &str) -> bool {
    let first = |p: &str| -> String {
        let rest = p.strip_prefix('/').unwrap_or(p);
        format!("/{}", rest.split('/').next().unwrap_or(""))
    };
    let wanted = first(path);
    route.paths.iter().any(|spec| match spec.get_ref() {
        PathSpec::Exact(p) | PathSpec::Prefix(p) => first(p) == wanted,
        PathSpec::Regex(_) => false,
    })
}

/// The request header the router sees for `probe`.
fn request(probe: &Probe<'_>) -> Result<RequestHeader, String> {
    let method = Method::from_bytes(probe.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("not a method: {:?}", probe.method))?;
    let uri: http::Uri = probe
        .url
        .parse()
        .map_err(|e| format!("not a URL: {:?}: {e}", probe.url))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if let Some(authority) = uri.authority() {
        req.insert_header(http::header::HOST, authority.as_str())
            .map_err(|e| e.to_string())?;
    }
    for header in probe.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("a header is `name: value`, not {header:?}"))?;
        let name = HeaderName::try_from(name.trim()).map_err(|e| format!("{name:?}: {e}"))?;
        let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("{value:?}: {e}"))?;
        if name == http::header::HOST {
            req.insert_header(name, value).map_err(|e| e.to_string())?;
        } else {
            req.append_header(name, value).map_err(|e| e.to_string())?;
        }
    }
    Ok(req)
}

/// What the route does with a request it takes.
fn target(route: &RouteConfig) -> Value {
    if let Some(upstream) = &route.upstream {
        return json!({ "upstream": upstream.get_ref() });
    }
    if let Some(split) = &route.split {
        let backends: Vec<Value> = split
            .get_ref()
            .iter()
            .map(|b| json!({ "upstream": b.upstream.get_ref(), "weight": b.weight }))
            .collect();
        return json!({ "split": backends });
    }
    if route.respond.is_some() {
        return json!({ "respond": true });
    }
    json!({ "aggregate": route.aggregate.is_some() })
}

/// Explain how `router` (built from `config`) routes `probe`.
pub fn explain(router: &Router, config: &Config, probe: &Probe<'_>) -> Result<Value, String> {
    let req = request(probe)?;
    let (lookup, matched) = router.route(&req);
    let path = normalize_path(req.uri.path()).into_owned();
    let host = crate::headers::request_host(&req).map(|h| normalize_host(h).into_owned());
    let (result, winner) = match &lookup {
        Lookup::Found { route, .. } => ("matched", Some(route.name.to_string())),
        Lookup::MethodNotAllowed { .. } => ("method_not_allowed", None),
        Lookup::NotFound => ("not_found", None),
    };
    let mut near = Vec::new();
    let mut outranked = Vec::new();
    let mut chosen = None;
    for config in &config.routes {
        let route: &RouteConfig = config;
        let name = route.name.get_ref();
        let rules = [
            host_rule(route, host.as_deref()),
            path_rule(route, &path),
            method_rule(route, &req.method),
            header_rule(route, &req.headers),
        ];
        let failed: Vec<(usize, &String)> = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
            .collect();
        match failed[..] {
            _ if winner.as_deref() == Some(name.as_str()) => {
                chosen = Some((route, rules.iter().flatten().cloned().collect::<Vec<_>>()));
            }
            [] => outranked.push(json!({ "route": name, "why": "matched, but a route with a higher priority or a more specific host or path won" })),
            // Only the path failed: near when it shares the request's first segment.
            [(PATH, _)] if !same_first_segment(route, &path) => {}
            [(rule, why)] => near.push((closeness(rule), json!({ "route": name, "failed": why }))),
            _ => {}
        }
    }
    // Nearest first: a method or a header, then the host, then the path; then file order.
    near.sort_by_key(|(rank, _)| *rank);
    let near: Vec<Value> = near.into_iter().map(|(_, miss)| miss).collect();
    let mut answer = json!({
        "request": { "method": req.method.as_str(), "host": host, "path": path, "query": req.uri.query() },
        "result": result,
        "route": winner,
        "near_misses": near,
        "outranked": outranked,
    });
    if let (
        Some((route, why)),
        Lookup::Found {
            route: compiled, ..
        },
    ) = (chosen, &lookup)
    {
        let mut upstream_req = req.clone();
        compiled
            .rewrite_uri(&mut upstream_req, &matched)
            .map_err(|e| format!("the rewrite failed: {e}"))?;
        let global = config.server.global_policies.iter().map(|p| p.get_ref());
        let policies: Vec<&String> = global
            .chain(route.policies.iter().map(|p| p.get_ref()))
            .collect();
        answer["why"] = json!(why);
        answer["policies"] = json!(policies);
        answer["target"] = target(route);
        answer["upstream_path"] = json!(upstream_req.uri.to_string());
    }
    Ok(answer)
}

/// `explain`'s answer as lines for a person.
pub fn text(answer: &Value) -> String {
    let r = &answer["request"];
    let mut out = format!(
        "{} {}{}{}\n",
        r["method"].as_str().unwrap_or(""),
        r["host"].as_str().unwrap_or("(no host)"),
        r["path"].as_str().unwrap_or(""),
        r["query"]
            .as_str()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    match answer["route"].as_str() {
        Some(route) => {
            out += &format!("route: {route}\n");
            for why in answer["why"].as_array().into_iter().flatten() {
                out += &format!("  because {}\n", why.as_str().unwrap_or(""));
            }
            out += &format!("policies: {}\n", answer["policies"]);
            out += &format!("target: {}\n", answer["target"]);
            out += &format!(
                "upstream path: {}\n",
                answer["upstream_path"].as_str().unwrap_or("")
            );
        }
        None => out += &format!("no route: {}\n", answer["result"].as_str().unwrap_or("")),
    }
    for miss in answer["near_misses"].as_array().into_iter().flatten() {
        out += &format!(
            "near miss: {}: {}\n",
            miss["route"].as_str().unwrap_or(""),
            miss["failed"].as_str().unwrap_or("")
        );
    }
    for other in answer["outranked"].as_array().into_iter().flatten() {
        out += &format!(
            "outranked: {}: {}\n",
            other["route"].as_str().unwrap_or(""),
            other["why"].as_str().unwrap_or("")
        );
    }
    out
}

/// One line of an `--expect` table: a request and the route it must take (`""`: none).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    method: String,
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    route: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectations {
    expect: Vec<Expectation>,
}

/// Check a table of `[[expect]]` requests (TOML) against the routes they must take: one line
/// per request, and whether every one took its route.
pub fn expect(router: &Router, config: &Config, table: &str) -> Result<(String, bool), String> {
    let table: Expectations = toml::from_str(table).map_err(|e| e.to_string())?;
    let (mut out, mut all) = (String::new(), true);
    for e in &table.expect {
        let headers: Vec<String> = e.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let probe = Probe {
            method: &e.method,
            url: &e.url,
            headers: &headers,
        };
        let answer = explain(router, config, &probe)?;
        let took = answer["route"].as_str().unwrap_or("");
        let ok = took == e.route;
        all &= ok;
        let shown = |r: &str| match r {
            "" => "no route".to_string(),
            r => r.to_string(),
        };
        out += &match ok {
            true => format!("ok   {} {} -> {}\n", e.method, e.url, shown(took)),
            false => format!(
                "FAIL {} {} -> {}, expected {}\n",
                e.method,
                e.url,
                shown(took),
                shown(&e.route)
            ),
        };
    }
    Ok((out, all))
}
