//! Request plumbing every proxied request gets: request ids, `x-forwarded-*`, hop-by-hop headers.

use http::header::MaxSizeReached;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
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

/// The longest client-supplied request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// A request id, kept as a header value so that sending it upstream and back to the client
/// shares one buffer instead of copying it.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl Default for RequestId {
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl RequestId {
    /// The client's request id if it is sane (short, visible ASCII without quotes or spaces),
    /// otherwise a new random one.
    pub fn of(headers: &HeaderMap) -> RequestId {
        if let Some(v) = headers.get(&X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
            {
                return RequestId(v.clone());
            }
        }
        // Hex digits are always a valid header value; the fallback is never taken.
        let id = random_hex::<32>();
        RequestId(HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0")))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from checked ASCII.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

pub const X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// W3C trace context for one hop: the trace this request belongs to and the span id the gateway
/// gives itself, which becomes the upstream's parent.
#[derive(Clone, Copy, Debug)]
pub struct TraceContext {
    trace_id: [u8; 32],
    span_id: [u8; 16],
    /// The client's span, when it sent a `traceparent`.
    parent_id: Option<[u8; 16]>,
    flags: [u8; 2],
}

impl Default for TraceContext {
    fn default() -> Self {
        TraceContext {
            trace_id: [b'0'; 32],
            span_id: [b'0'; 16],
            parent_id: None,
            flags: *b"00",
        }
    }
}

fn lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Bytes of hex digits already checked (twice as many digits as bytes).
fn from_hex<const N: usize>(digits: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let _ = hex::decode_to_slice(digits, &mut out);
    out
}

fn random_hex<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut bits = rand::random::<u128>();
    for (i, d) in out.iter_mut().enumerate() {
        if i == 32 {
            bits = rand::random::<u128>();
        }
        *d = b"0123456789abcdef"[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // All-zero ids are invalid in W3C trace context.
    if out.iter().all(|&d| d == b'0') {
        out[N - 1] = b'1';
    }
    out
}

impl TraceContext {
    /// Continue the client's trace when its `traceparent` is valid (version 00), with its
    /// sampling decision; otherwise start a new one, sampled with probability `sample_ratio`.
    /// Either way this hop gets a fresh span id.
    pub fn of(headers: &HeaderMap, sample_ratio: f64) -> TraceContext {
        let span_id = random_hex::<16>();
        if let Some(v) = headers.get(&TRACEPARENT) {
            let b = v.as_bytes();
            if b.len() == 55
                && &b[..3] == b"00-"
                && b[35] == b'-'
                && b[52] == b'-'
                && lower_hex(&b[3..35])
                && lower_hex(&b[36..52])
                && lower_hex(&b[53..55])
                && b[3..35].iter().any(|&c| c != b'0')
                && b[36..52].iter().any(|&c| c != b'0')
            {
                let mut trace_id = [0u8; 32];
                trace_id.copy_from_slice(&b[3..35]);
                let mut parent_id = [0u8; 16];
                parent_id.copy_from_slice(&b[36..52]);
                return TraceContext {
                    trace_id,
                    span_id,
                    parent_id: Some(parent_id),
                    flags: [b[53], b[54]],
                };
            }
        }
        let sampled = sample_ratio >= 1.0 || rand::random::<f64>() < sample_ratio;
        TraceContext {
            trace_id: random_hex::<32>(),
            span_id,
            parent_id: None,
            flags: if sampled { *b"01" } else { *b"00" },
        }
    }

    /// Whether this trace is recorded (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        from_hex::<1>(&self.flags)[0] & 1 == 1
    }

    pub fn trace_id_bytes(&self) -> [u8; 16] {
        from_hex(&self.trace_id)
    }

    pub fn span_id_bytes(&self) -> [u8; 8] {
        from_hex(&self.span_id)
    }

    pub fn parent_id_bytes(&self) -> Option<[u8; 8]> {
        self.parent_id.as_ref().map(|p| from_hex(p))
    }

    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// The `traceparent` to send upstream: this trace, with the gateway's span as parent.
    pub fn header(&self) -> HeaderValue {
        let mut v = [0u8; 55];
        v[..3].copy_from_slice(b"00-");
        v[3..35].copy_from_slice(&self.trace_id);
        v[35] = b'-';
        v[36..52].copy_from_slice(&self.span_id);
        v[52] = b'-';
        v[53..].copy_from_slice(&self.flags);
        // Hex digits and dashes are always a valid header value; the fallback is never taken.
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// The address of the client: the peer itself, or, when the peer is a trusted proxy, the last
/// address in `x-forwarded-for` that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else {
            return client;
        };
        for hop in list.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip, proxies) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

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
    let trusted = cx
        .snapshot
        .as_deref()
        .map_or(&[][..], |s| &s.trusted_proxies);
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

/// An address as text. IPv4, the common case, is written octet by octet: `Display` goes
/// through the formatting machinery four times per request.
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
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

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.99",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn request_ids() {
        let id = |h: &HeaderMap| RequestId::of(h).as_str().to_string();
        let mut h = HeaderMap::new();
        let generated = id(&h);
        assert_eq!(generated.len(), 32);
        assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generated, id(&h));
        h.insert(X_REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(id(&h), "abc-123");
        h.insert(X_REQUEST_ID, "has space".parse().unwrap());
        assert_ne!(id(&h), "has space");
        h.insert(X_REQUEST_ID, "x".repeat(200).parse().unwrap());
        assert_eq!(id(&h).len(), 32);
    }

    #[test]
    fn trace_context() {
        let mut h = HeaderMap::new();
        let fresh = TraceContext::of(&h, 1.0);
        let v = fresh.header();
        let s = v.to_str().unwrap();
        assert_eq!(s.len(), 55);
        assert!(s.starts_with("00-") && s.ends_with("-01"));
        assert_eq!(&s[3..35], fresh.trace_id());

        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, incoming.parse().unwrap());
        let cont = TraceContext::of(&h, 1.0);
        let out = cont.header();
        let out = out.to_str().unwrap();
        assert_eq!(cont.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "the gateway is a new span"
        );
        assert!(out.ends_with("-01"));

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            h.insert(TRACEPARENT, bad.parse().unwrap());
            assert_ne!(
                TraceContext::of(&h, 1.0).trace_id(),
                bad.get(3..35).unwrap_or("")
            );
        }
    }

    #[test]
    fn sampling_and_ids() {
        let mut h = HeaderMap::new();
        assert!(TraceContext::of(&h, 1.0).sampled());
        let never = TraceContext::of(&h, 0.0);
        assert!(!never.sampled());
        assert!(never.header().to_str().unwrap().ends_with("-00"));
        assert_eq!(never.parent_id_bytes(), None);
        // The client's decision stands, whatever the ratio.
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let t = TraceContext::of(&h, 0.0);
        assert!(t.sampled());
        assert_eq!(t.trace_id_bytes()[..3], [0x4b, 0xf9, 0x2f]);
        assert_eq!(
            t.parent_id_bytes(),
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        h.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        assert!(!TraceContext::of(&h, 1.0).sampled());
    }

    #[test]
    fn client_ip_trusts_only_proxies() {
        let proxies = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            "1.1.1.1, 2.2.2.2, 10.0.0.5".parse().unwrap(),
        );
        let untrusted: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(untrusted, &h, &proxies), untrusted);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &proxies),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
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
