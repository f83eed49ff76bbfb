//! `cors`: cross-origin resource sharing for browser clients.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
//! gateway, ahead of authentication and limits (it carries no credentials), unless
//! `preflight_continue` hands it to the target. Every other response of the route, proxied or
//! the gateway's own (a 401, a 429), gets the CORS headers for an allowed origin, replacing any
//! the target set; a disallowed origin gets none. `Vary: Origin` is set whenever the answer
//! depends on the origin. Origins are exact (ASCII case-insensitive), `*`, or `~regex`.

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfDuration, ConfigError};
use crate::filter::{Body, Context, Filter, Phases, Reply, Stage};
use crate::plumbing;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::MaxSizeReached;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use toml::Spanned;

pub const KIND: Kind = Kind {
    name: "cors",
    parse,
};

const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");

/// Every response header CORS owns: the target's are dropped, so none is ever doubled.
const OWNED: [HeaderName; 7] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
    ALLOW_PRIVATE_NETWORK,
];

/// The most headers a response gets: the owned ones but `expose` (not on a preflight), and a
/// `Vary` for each of `Origin` and `Access-Control-Request-Headers`.
const ADDED: usize = 8;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins, `"*"`, or `"~regex"`.
    pub allow_origins: Vec<Spanned<String>>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Absent: a preflight's requested headers are allowed as asked.
    pub allow_headers: Option<Vec<String>>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    pub max_age: Option<ConfDuration>,
    #[serde(default)]
    pub allow_private_network: bool,
    #[serde(default)]
    pub preflight_continue: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

struct CorsSpec {
    config: CorsConfig,
    filter: Arc<Cors>,
}

impl Spec for CorsSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

pub struct Cors {
    any: bool,
    exact: Box<[String]>,
    patterns: Box<[Regex]>,
    methods: HeaderValue,
    /// `None`: reflect what the preflight asks for.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    private_network: bool,
    preflight_continue: bool,
}

fn list(items: &[String]) -> Option<HeaderValue> {
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(", ")).ok())
        .flatten()
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: CorsConfig = src.settings()?;
    let mut errors = Vec::new();
    let mut exact = Vec::new();
    let mut patterns = Vec::new();
    let mut any = false;
    if config.allow_origins.is_empty() {
        errors.push(
            src.place
                .error("`allow_origins` is empty: no origin could use it"),
        );
    }
    for origin in &config.allow_origins {
        let at =
            |m: String| ConfigError::at(origin.span(), format!("policy `{}`: {m}", src.place.name));
        match origin.get_ref().as_str() {
            "*" if config.allow_credentials => errors.push(at(
                "`allow_origins = [\"*\"]` with `allow_credentials`: browsers refuse `*` on a \
                 credentialed request; list the origins"
                    .into(),
            )),
            "*" => any = true,
            o => match o.strip_prefix('~') {
                Some(re) => match Regex::new(re) {
                    Ok(re) => patterns.push(re),
                    Err(e) => errors.push(at(format!("invalid origin pattern {re:?}: {e}"))),
                },
                None => exact.push(o.to_ascii_lowercase()),
            },
        }
    }
    let names = |what: &str, items: &[String], errors: &mut Vec<ConfigError>| {
        for h in items {
            let star = h == "*";
            if star && config.allow_credentials {
                errors.push(src.place.error(format!(
                    "`{what} = [\"*\"]` means a literal `*` on credentialed requests; list them"
                )));
            } else if !star && HeaderName::from_bytes(h.as_bytes()).is_err() {
                errors.push(
                    src.place
                        .error(format!("{h:?} in `{what}` is not a header name")),
                );
            }
        }
    };
    names(
        "allow_headers",
        config.allow_headers.as_deref().unwrap_or(&[]),
        &mut errors,
    );
    names("expose_headers", &config.expose_headers, &mut errors);
    for m in &config.allow_methods {
        if Method::from_bytes(m.as_bytes()).is_err() || (m == "*" && config.allow_credentials) {
            errors.push(
                src.place
                    .error(format!("{m:?} in `allow_methods` is not a method")),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let filter = Arc::new(Cors {
        any,
        exact: exact.into(),
        patterns: patterns.into(),
        methods: list(&config.allow_methods).unwrap_or(HeaderValue::from_static("GET")),
        headers: config
            .allow_headers
            .as_deref()
            .map(|h| list(h).unwrap_or(HeaderValue::from_static(""))),
        expose: list(&config.expose_headers),
        credentials: config.allow_credentials,
        max_age: config.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        private_network: config.allow_private_network,
        preflight_continue: config.preflight_continue,
    });
    Ok(Arc::new(CorsSpec { config, filter }))
}

fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

impl Cors {
    fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.any
            || self.exact.iter().any(|o| o.eq_ignore_ascii_case(origin))
            || self.patterns.iter().any(|p| p.is_match(origin))
    }

    /// The preflight's own headers, for an allowed origin.
    fn preflight(&self, req: &RequestHeader, h: &mut HeaderMap) -> Result<(), MaxSizeReached> {
        h.try_insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone())?;
        let asked = req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
        match (&self.headers, asked) {
            (Some(allowed), _) if !allowed.is_empty() => {
                h.try_insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone())?;
            }
            (None, Some(asked)) => {
                plumbing::vary(h, "Access-Control-Request-Headers")?;
                h.try_insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone())?;
            }
            _ => {}
        }
        if let Some(age) = &self.max_age {
            h.try_insert(ACCESS_CONTROL_MAX_AGE, age.clone())?;
        }
        let private = req
            .headers
            .get(REQUEST_PRIVATE_NETWORK)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if private && self.private_network {
            h.try_insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Filter for Cors {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::RESPONSE
    }

    fn stage(&self) -> Stage {
        Stage::BeforeAuth
    }

    async fn request(&self, req: &RequestHeader, _cx: &mut Context) -> Result<(), Reply> {
        if self.preflight_continue || !is_preflight(req) {
            return Ok(());
        }
        // The headers are added in `response`, like any response's.
        Err(Reply {
            status: 204,
            body: Body::Fixed(Bytes::new()),
            headers: Vec::new(),
        })
    }

    fn response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        _cx: &mut Context,
    ) -> pingora::Result<()> {
        let preflight = is_preflight(req);
        if preflight && self.preflight_continue {
            // The target answers preflights itself.
            return Ok(());
        }
        let origin = req.headers.get(ORIGIN).filter(|o| self.allows(o));
        // One pass over the (few) response headers instead of a lookup per owned name.
        let theirs = resp
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-"));
        if !theirs && self.any && origin.is_none() {
            return Ok(());
        }
        // Straight into the header map, room for all of them reserved once.
        crate::headers::edit_response(resp, ADDED, |h| {
            if theirs {
                for name in &OWNED {
                    h.remove(name);
                }
            }
            if !self.any {
                plumbing::vary(h, "Origin")?;
            }
            let Some(origin) = origin else {
                return Ok(());
            };
            let allow = match self.any {
                true => HeaderValue::from_static("*"),
                false => origin.clone(),
            };
            h.try_insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow)?;
            if self.credentials {
                h.try_insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                )?;
            }
            if preflight {
                self.preflight(req, h)?;
            } else if let Some(expose) = &self.expose {
                h.try_insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            any: origins.contains(&"*"),
            exact: origins
                .iter()
                .filter(|o| !o.starts_with('~') && **o != "*")
                .map(|o| o.to_string())
                .collect(),
            patterns: origins
                .iter()
                .filter_map(|o| o.strip_prefix('~'))
                .map(|p| Regex::new(p).unwrap())
                .collect(),
            methods: HeaderValue::from_static("GET, POST"),
            headers: None,
            expose: Some(HeaderValue::from_static("x-request-id")),
            credentials,
            max_age: Some(HeaderValue::from(600)),
            private_network: false,
            preflight_continue: false,
        }
    }

    fn request(method: &str, origin: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        if let Some(o) = origin {
            req.insert_header("origin", o).unwrap();
        }
        req
    }

    fn answer(c: &Cors, req: &RequestHeader) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("access-control-allow-origin", "*")
            .unwrap();
        c.response(req, &mut resp, &mut Context::default()).unwrap();
        resp
    }

    #[test]
    fn allowed_origins_are_echoed_and_others_get_nothing() {
        let c = cors(
            &[
                "https://app.example.com",
                "~^https://[a-z]+\\.example\\.org$",
            ],
            true,
        );
        let resp = answer(&c, &request("GET", Some("https://APP.example.com")));
        assert_eq!(
            resp.headers["access-control-allow-origin"],
            "https://APP.example.com"
        );
        assert_eq!(resp.headers["access-control-allow-credentials"], "true");
        assert_eq!(
            resp.headers["access-control-expose-headers"],
            "x-request-id"
        );
        assert_eq!(resp.headers["vary"], "Origin");
        let resp = answer(&c, &request("GET", Some("https://shop.example.org")));
        assert_eq!(
            resp.headers["access-control-allow-origin"],
            "https://shop.example.org"
        );
        for bad in ["https://evil.com", "https://x.example.org.evil.com", "null"] {
            let resp = answer(&c, &request("GET", Some(bad)));
            assert!(
                resp.headers.get("access-control-allow-origin").is_none(),
                "{bad}"
            );
            assert_eq!(resp.headers["vary"], "Origin");
        }
        let resp = answer(&c, &request("GET", None));
        assert!(resp.headers.get("access-control-allow-origin").is_none());
        assert_eq!(
            resp.headers["vary"], "Origin",
            "a cache must not reuse it for an origin"
        );
    }

    #[test]
    fn wildcard_needs_no_vary() {
        let c = cors(&["*"], false);
        let resp = answer(&c, &request("GET", Some("https://any.where")));
        assert_eq!(resp.headers["access-control-allow-origin"], "*");
        assert!(resp.headers.get("vary").is_none());
        assert!(resp
            .headers
            .get("access-control-allow-credentials")
            .is_none());
    }

    #[tokio::test]
    async fn preflights_are_answered_with_what_they_ask() {
        let c = cors(&["https://app.example.com"], false);
        let mut req = request("OPTIONS", Some("https://app.example.com"));
        req.insert_header("access-control-request-method", "POST")
            .unwrap();
        req.insert_header("access-control-request-headers", "x-custom, content-type")
            .unwrap();
        let reply = c.request(&req, &mut Context::default()).await.unwrap_err();
        assert_eq!(reply.status, 204);
        let resp = answer(&c, &req);
        assert_eq!(resp.headers["access-control-allow-methods"], "GET, POST");
        assert_eq!(
            resp.headers["access-control-allow-headers"],
            "x-custom, content-type"
        );
        assert_eq!(resp.headers["access-control-max-age"], "600");
        assert!(resp.headers.get("access-control-expose-headers").is_none());
        // Private Network Access: granted only when asked and allowed.
        req.insert_header("access-control-request-private-network", "true")
            .unwrap();
        assert!(answer(&c, &req)
            .headers
            .get("access-control-allow-private-network")
            .is_none());
        let mut open = cors(&["https://app.example.com"], false);
        open.private_network = true;
        let resp = answer(&open, &req);
        assert_eq!(resp.headers["access-control-allow-private-network"], "true");
        // A plain OPTIONS is not a preflight.
        assert!(c
            .request(&request("OPTIONS", None), &mut Context::default())
            .await
            .is_ok());
    }
}
