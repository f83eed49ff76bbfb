//! gRPC as the gateway itself speaks it: which requests are gRPC, the status codes, and the
//! `grpc-timeout` and `grpc-message` encodings (the gRPC over HTTP/2 protocol document).
//!
//! A gRPC client reads a call's outcome from `grpc-status`, not from the HTTP status, so the
//! gateway's own answers to gRPC requests go out as trailers-only responses
//! ([`crate::reply`]); this module holds what those need.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const CONTENT_TYPE_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// Whether a request is gRPC: its content type is `application/grpc`, alone or with a suffix
/// (`+proto`, `+json`, `-web`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
    })
}

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Code(u8);

/// How many codes there are (`0` to `16`).
pub const CODES: usize = 17;

/// Every code, by number, with its name as `pylon_grpc_requests_total{code}` shows it.
const NAMES: [&str; CODES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The codes' numbers as header values, to answer without formatting.
const VALUES: [HeaderValue; CODES] = [
    HeaderValue::from_static("0"),
    HeaderValue::from_static("1"),
    HeaderValue::from_static("2"),
    HeaderValue::from_static("3"),
    HeaderValue::from_static("4"),
    HeaderValue::from_static("5"),
    HeaderValue::from_static("6"),
    HeaderValue::from_static("7"),
    HeaderValue::from_static("8"),
    HeaderValue::from_static("9"),
    HeaderValue::from_static("10"),
    HeaderValue::from_static("11"),
    HeaderValue::from_static("12"),
    HeaderValue::from_static("13"),
    HeaderValue::from_static("14"),
    HeaderValue::from_static("15"),
    HeaderValue::from_static("16"),
];

impl Code {
    pub const OK: Code = Code(0);
    pub const CANCELLED: Code = Code(1);
    pub const UNKNOWN: Code = Code(2);
    pub const INVALID_ARGUMENT: Code = Code(3);
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    pub const PERMISSION_DENIED: Code = Code(7);
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    pub const UNIMPLEMENTED: Code = Code(12);
    pub const INTERNAL: Code = Code(13);
    pub const UNAVAILABLE: Code = Code(14);
    pub const UNAUTHENTICATED: Code = Code(16);

    /// The code of a `grpc-status` value; an unknown number is `UNKNOWN`, as clients take it.
    pub fn parse(value: &[u8]) -> Option<Code> {
        let n: u32 = std::str::from_utf8(value).ok()?.parse().ok()?;
        Some(match u8::try_from(n) {
            Ok(n) if usize::from(n) < CODES => Code(n),
            _ => Code::UNKNOWN,
        })
    }

    /// How a call ended, for metrics and logs: the `grpc-status` seen, else what the HTTP
    /// status says (`499`: the client went away).
    pub fn of_call(seen: Option<Code>, http_status: u16) -> Code {
        match (seen, http_status) {
            (Some(code), _) => code,
            (None, 499) => Code::CANCELLED,
            // A 200 without a status: the call broke before its trailers.
            (None, 200) => Code::UNKNOWN,
            (None, status) => Code::of_http(status),
        }
    }

    /// The `grpc-status` a response's headers (trailers-only) or trailers carry.
    pub fn of_headers(headers: &HeaderMap) -> Option<Code> {
        Code::parse(headers.get(GRPC_STATUS)?.as_bytes())
    }

    /// The code for one of the gateway's own HTTP answers (`../shared/CONTRACT.md`; the rest
    /// as gRPC's HTTP-to-gRPC mapping has them).
    pub fn of_http(status: u16) -> Code {
        match status {
            200..=299 => Code::OK,
            400 | 411 | 414 => Code::INVALID_ARGUMENT,
            401 => Code::UNAUTHENTICATED,
            403 => Code::PERMISSION_DENIED,
            404 | 405 | 501 => Code::UNIMPLEMENTED,
            408 | 504 => Code::DEADLINE_EXCEEDED,
            413 | 429 | 431 => Code::RESOURCE_EXHAUSTED,
            500 => Code::INTERNAL,
            502 | 503 => Code::UNAVAILABLE,
            _ => Code::UNKNOWN,
        }
    }

    /// The HTTP status a JSON client gets for a call that ended with this code (the mapping of
    /// google/rpc/code.proto, as grpc-gateway and Envoy's transcoder use it).
    pub fn http_status(self) -> u16 {
        match self.0 {
            0 => 200,
            1 => 499,
            3 | 9 | 11 => 400,
            4 => 504,
            5 => 404,
            6 | 10 => 409,
            7 => 403,
            8 => 429,
            12 => 501,
            14 => 503,
            16 => 401,
            _ => 500,
        }
    }

    pub fn name(self) -> &'static str {
        NAMES[self.index()]
    }

    /// The code by name (`"UNAVAILABLE"`), as a configuration writes it.
    pub fn named(name: &str) -> Option<Code> {
        let i = NAMES.iter().position(|n| *n == name)?;
        Some(Code(i as u8))
    }

    /// Whether a target answering this failed, for its breaker: the codes that mean the
    /// server or the way to it broke (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`), as
    /// a 5xx does. The others are the call's own outcome (`NOT_FOUND`, `INVALID_ARGUMENT`, and
    /// `DEADLINE_EXCEEDED`, which the caller's deadline decides).
    pub fn is_failure(self) -> bool {
        matches!(self.0, 2 | 13 | 14 | 15)
    }

    /// The code's number, `0` to `16`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The `grpc-status` value.
    pub fn value(self) -> HeaderValue {
        VALUES[self.index()].clone()
    }
}

/// `grpc-message`: the text percent-encoded, as the protocol asks (bytes outside printable
/// ASCII, and `%`).
pub fn message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `grpc-timeout` value: at most eight digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value, in the finest unit that fits eight digits, rounded up as
/// gRPC's own clients do (so never zero).
pub fn timeout_value(left: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = left.as_nanos().max(1);
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos.div_ceil(per), unit))
        .find(|&(n, _)| n <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("1n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_by_content_type() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC+json", true),
            ("application/grpc-web-text", true),
            ("application/json", false),
            ("application/grp", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[test]
    fn the_contracts_status_table() {
        for (status, name) in [
            (401, "UNAUTHENTICATED"),
            (403, "PERMISSION_DENIED"),
            (404, "UNIMPLEMENTED"),
            (405, "UNIMPLEMENTED"),
            (429, "RESOURCE_EXHAUSTED"),
            (413, "RESOURCE_EXHAUSTED"),
            (400, "INVALID_ARGUMENT"),
            (502, "UNAVAILABLE"),
            (503, "UNAVAILABLE"),
            (504, "DEADLINE_EXCEEDED"),
            (418, "UNKNOWN"),
        ] {
            assert_eq!(Code::of_http(status).name(), name, "{status}");
        }
        assert_eq!(Code::of_http(503).value(), "14");
        assert_eq!(Code::parse(b"16"), Some(Code::UNAUTHENTICATED));
        assert_eq!(Code::parse(b"99"), Some(Code::UNKNOWN));
        assert_eq!(Code::parse(b"x"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("no route matches"), "no route matches");
        assert_eq!(message("100% sure\n"), "100%25 sure%0A");
        assert_eq!(message("café"), "caf%C3%A9");
    }

    #[test]
    fn timeouts_both_ways() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"123456789m"), None);
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(timeout_value(Duration::from_millis(1500)), "1500000u");
        assert_eq!(timeout_value(Duration::from_secs(3600)), "3600000m");
        assert_eq!(timeout_value(Duration::from_nanos(1)), "1n");
        assert_eq!(timeout_value(Duration::ZERO), "1n");
        assert_eq!(timeout_value(Duration::from_nanos(100_000_001)), "100001u");
    }
}
