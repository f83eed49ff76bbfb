//! Request plumbing every proxied request gets: `x-forwarded-*`, the request id and trace
//! context on their way upstream (`crate::ids`), hop-by-hop headers.

use crate::client_addr::{ip_text, trusted, X_FORWARDED_FOR};
use crate::ids::{TRACEPARENT, X_REQUEST_ID};
use http::header::MaxSizeReached;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
pub const PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Other client-address headers an upstream might believe; dropped unless a trusted proxy sent them.
const UNTRUSTED_FORWARDING: [HeaderName; 3] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
];
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub const X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");
/// What every proxied request gets on its way upstream: `x-consumer` from the identity (never
/// from the client), the forwarding headers, the target's `Host` (unless `preserve_host`
/// leaves `host` out), the request id and the trace context.
pub fn prepare_upstream(
    upstream: &mut RequestHeader,
    client: &RequestHeader,
    cx: &crate::filter::Context,
    host: Option<&HeaderValue>,
) -> pingora::Result<()> {
    // Hop-by-hop headers, and those a client names in `Connection`, are already gone:
    // Pingora's default upstream request policy strips them before the filter runs (and
    // refuses requests that nominate `Host` or `X-Forwarded-*`).
    let client_host = client
        .headers
        .get(http::header::HOST)
        .cloned()
        .or_else(|| client.uri.authority().and_then(|a| a.as_str().parse().ok()));
    let trusted = &cx.trusted_proxies;
    let proto = if cx.tls.is_some() {
        PROTO_HTTPS
    } else {
        PROTO_HTTP
    };
    let consumer = cx.identity.consumer.as_ref().map(|c| c.header.clone());
    crate::headers::edit_request(upstream, ADDED_UPSTREAM, |h| {
        match consumer {
            Some(c) => h.try_insert(X_CONSUMER, c)?,
            None => h.remove(X_CONSUMER),
        };
        set_forwarded(h, cx.peer, client_host, proto, trusted)?;
        if let Some(host) = host {
            h.try_insert(http::header::HOST, host.clone())?;
        }
        h.try_insert(X_REQUEST_ID, cx.request_id.header())?;
        h.try_insert(TRACEPARENT, cx.trace.header())?;
        Ok(())
    })
}

/// The most headers [`prepare_upstream`] adds: `x-consumer`, three `x-forwarded-*`, `host`,
/// the request id and `traceparent`.
const ADDED_UPSTREAM: usize = 7;

/// Set `x-forwarded-for`, `-proto` and `-host` on the upstream request. Values the client sent
/// are kept only when the peer is a trusted proxy.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: Option<IpAddr>,
    host: Option<HeaderValue>,
    proto: HeaderValue,
    proxies: &[IpNet],
) -> Result<(), MaxSizeReached> {
    let believed = peer.is_some_and(|p| trusted(p, proxies));
    let previous = if believed {
        join(h.get_all(&X_FORWARDED_FOR))
    } else {
        for name in &UNTRUSTED_FORWARDING {
            h.remove(name);
        }
        None
    };
    match peer {
        Some(peer) => {
            let value = match previous {
                Some(prev) => format!("{prev}, {peer}"),
                None => ip_text(peer),
            };
            // An address and commas are always a valid header value.
            if let Ok(value) = HeaderValue::try_from(value) {
                h.try_insert(X_FORWARDED_FOR, value)?;
            }
        }
        None => {
            h.remove(&X_FORWARDED_FOR);
        }
    }
    if !(believed && h.contains_key(&X_FORWARDED_PROTO)) {
        h.try_insert(X_FORWARDED_PROTO, proto)?;
    }
    if !(believed && h.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(v) => {
                h.try_insert(X_FORWARDED_HOST, v)?;
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

fn join(values: http::header::GetAll<'_, HeaderValue>) -> Option<String> {
    let mut out: Option<String> = None;
    for v in values {
        let s = v.to_str().ok()?;
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s);
            }
            None => out = Some(s.to_string()),
        }
    }
    out
}

/// Header names listed in `Connection`, which are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Remove hop-by-hop headers from a response going to the client; Pingora frames the
/// connection itself. A `101 Switching Protocols` (`upgrade`) keeps its upgrade headers.
pub fn strip_hop_by_hop_response(h: &mut HeaderMap, upgrade: bool) {
    if h.contains_key(CONNECTION) {
        for name in connection_listed(h) {
            if !(upgrade && name == UPGRADE) {
                h.remove(&name);
            }
        }
        if !upgrade {
            h.remove(&CONNECTION);
        }
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION] {
        h.remove(&name);
    }
}

/// Make a response header fit a body that a filter is about to change (edit, compress):
/// streamed, since its length is not known yet; no longer rangeable; and only weakly the same
/// as what the target tagged (a strong `ETag` is weakened, as nginx's gzip does).
pub fn streamed(resp: &mut ResponseHeader) -> pingora::Result<()> {
    use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, ETAG, TRANSFER_ENCODING};
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    resp.insert_header(TRANSFER_ENCODING, "chunked")?;
    if let Some(etag) = resp.headers.get(ETAG).map(HeaderValue::as_bytes) {
        if etag.starts_with(b"\"") {
            if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag].concat()) {
                resp.insert_header(ETAG, weak)?;
            }
        } else if !etag.starts_with(b"W/") {
            resp.remove_header(&ETAG);
        }
    }
    Ok(())
}

/// Add `name` to the response's `Vary`, unless it is listed already (or `Vary: *`).
pub fn vary(h: &mut HeaderMap, name: &'static str) -> Result<(), MaxSizeReached> {
    let listed = h.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case(name))
        })
    });
    if listed {
        return Ok(());
    }
    h.try_append(http::header::VARY, HeaderValue::from_static(name))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_headers() {
        let proxies = nets(&["10.0.0.0/8"]);
        let client = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(*n, HeaderValue::from_static(v));
            }
            h
        };
        let mut h = client(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarded(
            &mut h,
            Some("9.9.9.9".parse().unwrap()),
            Some(HeaderValue::from_static("h")),
            HeaderValue::from_static("http"),
            &proxies,
        )
        .unwrap();
        assert!(h.get("x-real-ip").is_none());
        assert!(h.get("forwarded").is_none());
        assert_eq!(h["x-forwarded-for"], "9.9.9.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "h");

        let mut h = client(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            Some("10.1.1.1".parse().unwrap()),
            Some(HeaderValue::from_static("h")),
            HeaderValue::from_static("http"),
            &proxies,
        )
        .unwrap();
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop_response(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("x-keep").is_some());

        let mut ws = HeaderMap::new();
        ws.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        ws.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop_response(&mut ws, true);
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["connection"], "Upgrade");
    }

    #[test]
    fn a_changed_body_is_streamed_and_weakly_tagged() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", "10").unwrap();
        resp.insert_header("accept-ranges", "bytes").unwrap();
        resp.insert_header("etag", "\"abc\"").unwrap();
        streamed(&mut resp).unwrap();
        assert!(resp.headers.get("content-length").is_none());
        assert!(resp.headers.get("accept-ranges").is_none());
        assert_eq!(resp.headers["transfer-encoding"], "chunked");
        assert_eq!(resp.headers["etag"], "W/\"abc\"");
    }

    #[test]
    fn vary_lists_each_name_once() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("vary", "Accept-Encoding, Cookie")
            .unwrap();
        crate::headers::edit_response(&mut resp, 1, |h| {
            vary(h, "accept-encoding")?;
            vary(h, "Origin")?;
            vary(h, "Origin")
        })
        .unwrap();
        let all: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(all, ["Accept-Encoding, Cookie", "Origin"]);
    }
}
