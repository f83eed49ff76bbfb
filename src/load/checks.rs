//! Checks of meaning that serde cannot make: names that must exist, values that must compile.
//! Some ask the module that will use the value (an upstream's breaker and discovery, an
//! aggregate's paths, an API key's digest), which is why they run here, above the config layer.
//!
//! Every check pushes an error and goes on, so one run reports everything wrong with a file.

use crate::config::{
    parse_cidr, resolve, Balancer, Config, ConfigError, HealthCheckKind, Located, PathSpec,
    RouteConfig, UpstreamConfig, MAX_RETRIES, MAX_WEIGHT,
};
use crate::grpc::Code;
use crate::policy::basic_auth::bcrypt_cost;
use crate::policy::Policies;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

/// Every problem with the meaning of `config` and its `policies`, appended to `errors`. Each
/// policy kind checks its own settings as it is parsed ([`crate::policy`]); these are the
/// checks across sections. `unparsed` names upstreams and policies that exist but failed to
/// parse (already reported).
pub fn check(
    config: &Config,
    policies: &Policies,
    unparsed: &[String],
    errors: &mut Vec<ConfigError>,
) {
    check_server(config, errors);
    check_tracing(config, errors);
    check_purge_redis(config, errors);
    for (name, upstream) in &config.upstreams {
        check_upstream(name, upstream, errors);
    }
    for name in &config.server.global_policies {
        check_policy_name(policies, unparsed, name, errors);
    }
    for (name, policy) in policies {
        // Names go into metric labels and `RateLimit` structured-field strings.
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            errors.push(ConfigError::at(
                policy.span.clone(),
                format!("policy name {name:?} may only use letters, digits, `_`, `.` and `-`"),
            ));
        }
    }
    let mut keys = HashSet::new();
    for consumer in config.consumers.values() {
        for key in &consumer.api_keys {
            match crate::policy::api_key::key_digest(key.get_ref().expose()) {
                Ok(digest) => {
                    if !keys.insert(digest) {
                        errors.push(ConfigError::at(
                            key.span(),
                            "this API key belongs to two consumers",
                        ));
                    }
                }
                Err(e) => errors.push(ConfigError::at(key.span(), e)),
            }
        }
    }
    check_consumer_credentials(config, errors);
    let mut names = HashSet::new();
    for route in &config.routes {
        let name = &route.name;
        if !names.insert(name.get_ref().as_str()) {
            errors.push(ConfigError::at(
                name.span(),
                format!("duplicate route name `{}`", name.get_ref()),
            ));
        }
        check_route(config, policies, unparsed, route, errors);
    }
}

/// Basic-auth users and JWT subjects each identify one consumer.
fn check_consumer_credentials(config: &Config, errors: &mut Vec<ConfigError>) {
    let mut users = HashSet::new();
    let mut subjects = HashSet::new();
    let mut certs = HashSet::new();
    for (name, consumer) in &config.consumers {
        // The name goes upstream as `x-consumer`.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(ConfigError::at(
                consumer.span.clone(),
                format!("consumer name {name:?} must be printable ASCII without spaces"),
            ));
        }
        if let Some(cred) = &consumer.basic_auth {
            let c = cred.get_ref();
            if let Err(e) = bcrypt_cost(c.password_hash.expose()) {
                errors.push(ConfigError::at(
                    cred.span(),
                    format!("`password_hash`: {e}"),
                ));
            }
            if !users.insert(c.user.as_str()) {
                errors.push(ConfigError::at(
                    cred.span(),
                    format!("basic-auth user `{}` belongs to two consumers", c.user),
                ));
            }
        }
        if let Some(subject) = &consumer.jwt_subject {
            if !subjects.insert(subject.get_ref().as_str()) {
                errors.push(ConfigError::at(
                    subject.span(),
                    format!(
                        "jwt_subject `{}` belongs to two consumers",
                        subject.get_ref()
                    ),
                ));
            }
        }
        if let Some(cn) = &consumer.client_cert {
            if !certs.insert(cn.get_ref().as_str()) {
                errors.push(ConfigError::at(
                    cn.span(),
                    format!("client_cert `{}` belongs to two consumers", cn.get_ref()),
                ));
            }
        }
    }
}

fn check_tracing(config: &Config, errors: &mut Vec<ConfigError>) {
    let t = &config.tracing;
    let ratio = *t.sample_ratio.get_ref();
    if !(0.0..=1.0).contains(&ratio) {
        errors.push(ConfigError::at(
            t.sample_ratio.span(),
            format!("`sample_ratio` must be from 0 to 1, not {ratio}"),
        ));
    }
    if let Some(url) = &t.otlp_endpoint {
        let u = url.get_ref();
        if u.parse::<http::Uri>().is_err()
            || !(u.starts_with("http://") || u.starts_with("https://"))
        {
            errors.push(ConfigError::at(
                url.span(),
                format!("`otlp_endpoint` {u:?} must be an http:// or https:// URL"),
            ));
        }
    }
}

/// `[cache] purge_redis`: Redis URLs, at least one.
fn check_purge_redis(config: &Config, errors: &mut Vec<ConfigError>) {
    let Some(nodes) = &config.cache.purge_redis else {
        return;
    };
    let urls = nodes.get_ref().urls();
    if urls.is_empty() {
        errors.push(ConfigError::at(
            nodes.span(),
            "`purge_redis` needs a URL or at least one node",
        ));
    }
    for url in urls {
        if let Err(e) = redis::Client::open(url.as_str()) {
            errors.push(ConfigError::at(
                nodes.span(),
                format!("`purge_redis`: {url:?} is not a Redis URL: {e}"),
            ));
        }
    }
}

fn check_server(config: &Config, errors: &mut Vec<ConfigError>) {
    let server = &config.server;
    if server.listen.is_empty() {
        errors.push(ConfigError::at(
            0..0,
            "`server.listen` needs at least one address",
        ));
    }
    let keepalive = &server.keepalive_timeout;
    if keepalive.get_ref().0 < Duration::from_secs(1) {
        errors.push(ConfigError::at(
            keepalive.span(),
            "`keepalive_timeout` must be at least 1s",
        ));
    }
    let mut seen = HashSet::new();
    let listeners = server
        .listen
        .iter()
        .chain(server.tls.iter().map(|t| &t.listen));
    for addr in listeners {
        if !seen.insert(addr.get_ref()) {
            errors.push(ConfigError::at(
                addr.span(),
                format!("listen address {:?} is given twice", addr.get_ref()),
            ));
        }
        if addr.get_ref().parse::<SocketAddr>().is_err() {
            errors.push(ConfigError::at(
                addr.span(),
                format!(
                    "invalid listen address {:?}: expected IP:PORT",
                    addr.get_ref()
                ),
            ));
        }
    }
    if let Some(admin) = &config.admin {
        let listen = &admin.listen;
        if listen.get_ref().parse::<SocketAddr>().is_err() {
            errors.push(ConfigError::at(
                listen.span(),
                format!(
                    "invalid admin listen address {:?}: expected IP:PORT",
                    listen.get_ref()
                ),
            ));
        } else if seen.contains(listen.get_ref()) {
            errors.push(ConfigError::at(
                listen.span(),
                "the admin listener cannot share an address with `server.listen` or a TLS listener",
            ));
        }
    }
    for cidr in &server.trusted_proxies {
        if parse_cidr(cidr.get_ref()).is_none() {
            errors.push(ConfigError::at(
                cidr.span(),
                format!("invalid CIDR {:?} in `trusted_proxies`", cidr.get_ref()),
            ));
        }
    }
}

fn check_upstream(name: &str, upstream: &Located<UpstreamConfig>, errors: &mut Vec<ConfigError>) {
    if upstream.retries > MAX_RETRIES {
        errors.push(ConfigError::at(
            upstream.span.clone(),
            format!("upstream `{name}`: retries must be at most {MAX_RETRIES}"),
        ));
    }
    if upstream.targets.is_empty() && upstream.discovery.is_none() {
        errors.push(ConfigError::at(
            upstream.span.clone(),
            format!("upstream `{name}` has no targets and no discovery"),
        ));
    }
    if let Some(cb) = &upstream.circuit_breaker {
        for message in crate::upstream::breaker::check(cb.get_ref()) {
            errors.push(ConfigError::at(cb.span(), message));
        }
    }
    if let Some(d) = &upstream.discovery {
        errors.extend(crate::upstream::discovery::check(d));
    }
    if upstream.retry_backoff.max.0 < upstream.retry_backoff.base.0 {
        errors.push(ConfigError::at(
            upstream.span.clone(),
            format!("upstream `{name}`: retry_backoff.max must be at least its base"),
        ));
    }
    for target in &upstream.targets {
        let t = target.get_ref();
        if resolve(t.addr()).is_none() {
            errors.push(ConfigError::at(
                target.span(),
                format!(
                    "invalid target {:?}: expected HOST:PORT that resolves",
                    t.addr()
                ),
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&t.weight()) {
            errors.push(ConfigError::at(
                target.span(),
                format!("a target's weight must be from 1 to {MAX_WEIGHT}"),
            ));
        }
    }
    match (&upstream.hash_on, upstream.balancer) {
        (Some(h), Balancer::ConsistentHash) => {
            if crate::upstream::HashOn::parse(h.get_ref()).is_none() {
                errors.push(ConfigError::at(
                    h.span(),
                    format!(
                        "invalid hash_on {:?}: expected client_ip, path, header:NAME or cookie:NAME",
                        h.get_ref()
                    ),
                ));
            }
        }
        (Some(h), _) => errors.push(ConfigError::at(
            h.span(),
            "`hash_on` only applies to balancer = \"consistent_hash\"",
        )),
        (None, _) => {}
    }
    if let Some(hc) = &upstream.health_check {
        let path = hc.path.get_ref();
        if hc.kind == HealthCheckKind::Http
            && (!path.starts_with('/') || http::Uri::try_from(path.as_str()).is_err())
        {
            errors.push(ConfigError::at(
                hc.path.span(),
                "health check path must be a URI path starting with `/`",
            ));
        }
    }
}

fn check_policy_name(
    policies: &Policies,
    unparsed: &[String],
    name: &Spanned<String>,
    errors: &mut Vec<ConfigError>,
) {
    let n = name.get_ref();
    if !policies.contains_key(n) && !unparsed.contains(n) {
        errors.push(ConfigError::at(
            name.span(),
            format!("unknown policy `{n}`"),
        ));
    }
}

fn check_route(
    config: &Config,
    policies: &Policies,
    unparsed: &[String],
    route: &Located<RouteConfig>,
    errors: &mut Vec<ConfigError>,
) {
    let name = route.name.get_ref();
    let actions = route.upstream.is_some() as u8
        + route.split.is_some() as u8
        + route.respond.is_some() as u8
        + route.aggregate.is_some() as u8;
    if actions != 1 {
        errors.push(ConfigError::at(
            route.name.span(),
            format!(
                "route `{name}` needs exactly one of `upstream`, `split`, `respond` or `aggregate`"
            ),
        ));
    }
    crate::aggregate::check(config, route, errors);
    let split_span = route.split.as_ref().map(|s| s.span());
    let span = split_span.or(route.sticky.as_ref().map(|s| s.span()));
    for message in crate::split::check(route) {
        let at = span.clone().unwrap_or_else(|| route.name.span());
        errors.push(ConfigError::at(at, format!("route `{name}`: {message}")));
    }
    if let Some(mirror) = &route.mirror {
        let m = mirror.get_ref();
        let up = &m.upstream;
        if !config.upstreams.contains_key(up.get_ref()) && !unparsed.contains(up.get_ref()) {
            errors.push(ConfigError::at(
                up.span(),
                format!(
                    "route `{name}` mirrors to unknown upstream `{}`",
                    up.get_ref()
                ),
            ));
        }
        if route.upstream.is_none() && route.split.is_none() {
            errors.push(ConfigError::at(
                mirror.span(),
                format!("route `{name}`: `mirror` copies what goes to an `upstream` or `split`"),
            ));
        }
        if !(0.0..=100.0).contains(&m.percent) || m.max_inflight == 0 {
            errors.push(ConfigError::at(
                mirror.span(),
                format!(
                    "route `{name}`: `mirror.percent` is 0 to 100, and `max_inflight` at least 1"
                ),
            ));
        }
    }
    for backend in route.split.iter().flat_map(|s| s.get_ref()) {
        let up = &backend.upstream;
        if !config.upstreams.contains_key(up.get_ref()) && !unparsed.contains(up.get_ref()) {
            errors.push(ConfigError::at(
                up.span(),
                format!(
                    "route `{name}` splits to unknown upstream `{}`",
                    up.get_ref()
                ),
            ));
        }
    }
    if let Some(up) = &route.upstream {
        if !config.upstreams.contains_key(up.get_ref()) && !unparsed.contains(up.get_ref()) {
            errors.push(ConfigError::at(
                up.span(),
                format!("route `{name}` names unknown upstream `{}`", up.get_ref()),
            ));
        }
    }
    for policy in &route.policies {
        check_policy_name(policies, unparsed, policy, errors);
    }
    for host in &route.hosts {
        if !valid_host(host.get_ref()) {
            errors.push(ConfigError::at(
                host.span(),
                format!(
                    "invalid host {:?}: expected a name like api.example.com or *.example.com",
                    host.get_ref()
                ),
            ));
        }
    }
    for method in &route.methods {
        if !valid_method(method.get_ref()) {
            errors.push(ConfigError::at(
                method.span(),
                format!(
                    "invalid method {:?}: expected an upper-case HTTP method",
                    method.get_ref()
                ),
            ));
        }
    }
    check_headers(&route.headers, &route.span, name, "header", errors);
    for path in &route.paths {
        if let PathSpec::Regex(re) = path.get_ref() {
            if let Err(e) = re.regex() {
                errors.push(ConfigError::at(
                    path.span(),
                    format!("invalid path regex: {e}"),
                ));
            }
        }
    }
    if let Some(rw) = &route.rewrite {
        if let Err(e) = rw.pattern.get_ref().regex() {
            errors.push(ConfigError::at(
                rw.pattern.span(),
                format!("invalid rewrite pattern: {e}"),
            ));
        }
        if !rw.to.get_ref().starts_with('/') {
            errors.push(ConfigError::at(
                rw.to.span(),
                "rewrite `to` must start with `/`: it becomes the upstream path",
            ));
        }
    }
    if let Some(respond) = &route.respond {
        let status = *respond.status.get_ref();
        if !(200..=599).contains(&status) {
            errors.push(ConfigError::at(
                respond.status.span(),
                format!("invalid status {status}: expected 200 to 599"),
            ));
        }
        check_headers(
            &respond.headers,
            &route.span,
            name,
            "response header",
            errors,
        );
        for header in respond.headers.keys() {
            if FRAMING_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
                errors.push(ConfigError::at(
                    route.span.clone(),
                    format!("route `{name}`: `{header}` is set by the gateway and cannot be given"),
                ));
            }
        }
        if matches!(status, 204 | 304) && !respond.body.is_empty() {
            errors.push(ConfigError::at(
                respond.status.span(),
                format!("a {status} response cannot have a body"),
            ));
        }
    }
    if let Some(fallback) = &route.fallback {
        let status = *fallback.status.get_ref();
        let span = if fallback.status.span().is_empty() {
            route.span.clone()
        } else {
            fallback.status.span()
        };
        if !(200..=599).contains(&status) || matches!(status, 204 | 304) {
            errors.push(ConfigError::at(
                span.clone(),
                format!("invalid fallback status {status}: expected 200 to 599, not 204 or 304"),
            ));
        }
        if route.upstream.is_none() {
            errors.push(ConfigError::at(
                span,
                format!("route `{name}`: `fallback` needs an `upstream`"),
            ));
        }
        check_headers(
            &fallback.headers,
            &route.span,
            name,
            "fallback header",
            errors,
        );
        if let Some(code) = &fallback.grpc_status {
            if Code::named(code.get_ref()).is_none() {
                errors.push(ConfigError::at(
                    code.span(),
                    format!(
                        "unknown gRPC status {:?}: expected a name such as \"UNAVAILABLE\"",
                        code.get_ref()
                    ),
                ));
            }
        }
        if let Some(ct) = &fallback.content_type {
            if http::HeaderValue::from_str(ct).is_err() {
                errors.push(ConfigError::at(
                    route.span.clone(),
                    format!("route `{name}`: invalid fallback content_type {ct:?}"),
                ));
            }
        }
    }
}

/// Headers that frame the message or the connection: the gateway writes them itself.
const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// Header names and values that HTTP allows.
fn check_headers(
    headers: &std::collections::BTreeMap<String, String>,
    span: &std::ops::Range<usize>,
    route: &str,
    what: &str,
    errors: &mut Vec<ConfigError>,
) {
    for (k, v) in headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            errors.push(ConfigError::at(
                span.clone(),
                format!("route `{route}`: invalid {what} name {k:?}"),
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            errors.push(ConfigError::at(
                span.clone(),
                format!("route `{route}`: invalid {what} value {v:?}"),
            ));
        }
    }
}

fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn valid_method(m: &str) -> bool {
    !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase())
}
