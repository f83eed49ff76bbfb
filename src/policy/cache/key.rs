//! A cache key as configured: the parts of a request that tell entries apart, compiled at load.
//!
//! Entries are per route. The query is normalised: parameters in `ignore_query` are left out and the rest sorted, so
//! `?b=2&a=1&utm_source=x` and `?a=1&b=2` share an entry. Parts are written with their names
//! and lengths, so no two different requests write the same key.

use crate::filter::Context;
use http::HeaderName;
use pingora::http::RequestHeader;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Host,
    Path,
    Query,
    Header(HeaderName),
    Consumer,
}

#[derive(Debug, Clone)]
pub struct KeySpec {
    parts: Vec<Part>,
    ignore_query: Vec<String>,
}

impl KeySpec {
    pub fn parse(parts: &[String], ignore_query: &[String]) -> Result<KeySpec, String> {
        let parts = parts
            .iter()
            .map(|p| match p.as_str() {
                "host" => Ok(Part::Host),
                "path" => Ok(Part::Path),
                "query" => Ok(Part::Query),
                "consumer" => Ok(Part::Consumer),
                other => match other.strip_prefix("header:") {
                    Some(name) => HeaderName::try_from(name)
                        .map(Part::Header)
                        .map_err(|_| format!("`key`: `{name}` is not a header name")),
                    None => Err(format!(
                        "`key`: `{other}` is not one of `host`, `path`, `query`, `header:NAME`, `consumer`"
                    )),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !parts.contains(&Part::Path) {
            return Err("`key` must include `path`".into());
        }
        Ok(KeySpec {
            parts,
            ignore_query: ignore_query.to_vec(),
        })
    }

    /// The request's primary key. It starts with the route's name: two routes may send the
    /// same path to different upstreams, so they never share an entry.
    pub fn primary(&self, req: &RequestHeader, cx: &Context) -> String {
        let mut key = String::with_capacity(128);
        let mut put = |name: &str, value: &[u8]| {
            let value = String::from_utf8_lossy(value);
            let _ = writeln!(key, "{name}:{}:{value}", value.len());
        };
        put("route", cx.route.as_deref().unwrap_or_default().as_bytes());
        for part in &self.parts {
            match part {
                Part::Host => {
                    let host = req
                        .uri
                        .authority()
                        .map(|a| a.as_str().as_bytes())
                        .or_else(|| req.headers.get(http::header::HOST).map(|v| v.as_bytes()))
                        .unwrap_or_default();
                    put("host", &host.to_ascii_lowercase());
                }
                Part::Path => put("path", req.uri.path().as_bytes()),
                Part::Query => put("query", self.query(req.uri.query()).as_bytes()),
                Part::Header(name) => {
                    let values: Vec<&[u8]> = req
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.as_bytes())
                        .collect();
                    put(name.as_str(), &values.join(&b","[..]));
                }
                Part::Consumer => {
                    let consumer = cx.identity.consumer.as_ref().map(|c| c.name.as_bytes());
                    put("consumer", consumer.unwrap_or_default());
                }
            }
        }
        key
    }

    /// The query without ignored parameters, sorted.
    fn query(&self, query: Option<&str>) -> String {
        sorted_query(query.unwrap_or_default(), &self.ignore_query)
    }
}

/// A query's parameters but `ignore`d ones, sorted: as keys have them.
pub fn sorted_query(query: &str, ignore: &[String]) -> String {
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or_default();
            !ignore.iter().any(|i| i == name)
        })
        .collect();
    pairs.sort_unstable();
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: &KeySpec, uri: &str, headers: &[(&str, &str)]) -> String {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        req.insert_header("host", "Example.com").unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        spec.primary(&req, &Context::default())
    }

    #[test]
    fn the_query_is_normalised() {
        let spec = KeySpec::parse(
            &["host".into(), "path".into(), "query".into()],
            &["utm_source".into()],
        )
        .unwrap();
        assert_eq!(
            key(&spec, "/a?b=2&a=1&utm_source=x", &[]),
            key(&spec, "/a?a=1&b=2", &[])
        );
        assert_ne!(key(&spec, "/a?a=1", &[]), key(&spec, "/a?a=2", &[]));
        assert_ne!(key(&spec, "/a", &[]), key(&spec, "/b", &[]));
    }

    #[test]
    fn chosen_headers_split_entries_and_others_do_not() {
        let spec = KeySpec::parse(&["path".into(), "header:x-tenant".into()], &[]).unwrap();
        assert_ne!(
            key(&spec, "/a", &[("x-tenant", "a")]),
            key(&spec, "/a", &[("x-tenant", "b")])
        );
        assert_eq!(
            key(&spec, "/a", &[("x-other", "a")]),
            key(&spec, "/a", &[("x-other", "b")])
        );
    }

    #[test]
    fn routes_never_share_an_entry() {
        let spec = KeySpec::parse(&["path".into()], &[]).unwrap();
        let req = RequestHeader::build("GET", b"/a", None).unwrap();
        let mut a = Context::default();
        a.route = Some("a".into());
        let mut b = Context::default();
        b.route = Some("b".into());
        assert_ne!(spec.primary(&req, &a), spec.primary(&req, &b));
    }

    #[test]
    fn a_key_needs_the_path_and_known_parts() {
        assert!(KeySpec::parse(&["host".into()], &[]).is_err());
        assert!(KeySpec::parse(&["path".into(), "cookie".into()], &[]).is_err());
    }
}
