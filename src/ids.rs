//! The identifiers a request carries: its request id (`x-request-id`) and its W3C trace
//! context (`traceparent`). Below the filters, the error shape and the plumbing that use them.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
