//! What a rate or concurrency limit counts by: `consumer`, `client_ip`, `route`, `header:NAME`,
//! or several of them combined in order.
//!
//! The key is parsed once at load; per request its parts are fed, length-prefixed, to a
//! hasher, so no key string is built. A request without a consumer is counted by its client
//! address instead (as Kong does), so anonymous traffic cannot share one unlimited bucket.

use crate::consumer::Consumer;
use http::HeaderName;
use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::LazyLock;

/// Hashes keys of in-process counters. One per process (random, so clients cannot aim for
/// collisions), the same for every configuration, so counts kept across a reload still match
/// their keys.
pub static KEY_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// What a request brings to its limit keys besides its headers.
pub struct Facts<'a> {
    pub client_ip: IpAddr,
    pub route: &'a str,
}

impl<'a> Facts<'a> {
    /// The facts of a request whose client address is `client_ip`.
    pub fn of(client_ip: IpAddr, cx: &'a crate::filter::Context) -> Facts<'a> {
        Facts {
            client_ip,
            route: cx.route_name(),
        }
    }
}

/// What a limit counts by unless its `key` says otherwise.
pub fn default_key() -> Vec<String> {
    vec!["client_ip".into()]
}

enum Part {
    Consumer,
    ClientIp,
    Route,
    Header(HeaderName),
}

pub struct KeySpec(Box<[Part]>);

impl KeySpec {
    pub fn parse(parts: &[String]) -> Result<KeySpec, String> {
        if parts.is_empty() {
            return Err(
                "`key` needs at least one of consumer, client_ip, route, header:NAME".into(),
            );
        }
        parts
            .iter()
            .map(|p| match p.as_str() {
                "consumer" => Ok(Part::Consumer),
                "client_ip" => Ok(Part::ClientIp),
                "route" => Ok(Part::Route),
                other => {
                    let name = other.strip_prefix("header:").ok_or_else(|| {
                        format!("unknown key part {other:?}; expected consumer, client_ip, route or header:NAME")
                    })?;
                    HeaderName::from_bytes(name.as_bytes())
                        .map(Part::Header)
                        .map_err(|_| format!("invalid header name {name:?} in key"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| KeySpec(parts.into()))
    }

    /// Feed the request's key to `out`, part by part, each tagged and length-prefixed so that
    /// different combinations never run together.
    pub fn feed(
        &self,
        req: &pingora::http::RequestHeader,
        facts: &Facts,
        consumer: Option<&Consumer>,
        out: &mut dyn FnMut(&[u8]),
    ) {
        let mut part = |tag: u8, bytes: &[u8]| {
            out(&[tag]);
            out(&(bytes.len() as u32).to_le_bytes());
            out(bytes);
        };
        let ip = |part: &mut dyn FnMut(u8, &[u8])| match facts.client_ip {
            IpAddr::V4(v4) => part(b'i', &v4.octets()),
            IpAddr::V6(v6) => part(b'i', &v6.octets()),
        };
        for p in self.0.iter() {
            match p {
                Part::Consumer => match consumer {
                    Some(c) => part(b'c', c.name.as_bytes()),
                    None => ip(&mut part),
                },
                Part::ClientIp => ip(&mut part),
                Part::Route => part(b'r', facts.route.as_bytes()),
                Part::Header(name) => {
                    let value = req.headers.get(name).map_or(&b""[..], |v| v.as_bytes());
                    part(b'h', value)
                }
            }
        }
    }

    /// Whether the key names the route, so each route of the policy counts apart.
    pub fn has_route(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::Route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: &[&str], ip: &str, consumer: Option<&Consumer>, header: &str) -> Vec<u8> {
        let spec = KeySpec::parse(&spec.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user", header).unwrap();
        let facts = Facts {
            client_ip: ip.parse().unwrap(),
            route: "r",
        };
        let mut out = Vec::new();
        spec.feed(&req, &facts, consumer, &mut |b| out.extend_from_slice(b));
        out
    }

    #[test]
    fn parts_distinguish_requests() {
        let alice = Consumer::new("alice", vec![]);
        assert_eq!(
            key(&["consumer"], "10.0.0.1", Some(&alice), ""),
            key(&["consumer"], "10.0.0.2", Some(&alice), "")
        );
        // Without a consumer, the client address stands in.
        assert_ne!(
            key(&["consumer"], "10.0.0.1", None, ""),
            key(&["consumer"], "10.0.0.2", None, "")
        );
        assert_ne!(
            key(&["header:x-user"], "10.0.0.1", None, "a"),
            key(&["header:x-user"], "10.0.0.1", None, "b")
        );
        assert_ne!(
            key(&["client_ip", "route"], "10.0.0.1", None, ""),
            key(&["client_ip"], "10.0.0.1", None, "")
        );
        assert!(KeySpec::parse(&["moon".into()]).is_err());
        assert!(KeySpec::parse(&["header:bad header".into()]).is_err());
        assert!(KeySpec::parse(&[]).is_err());
    }
}
