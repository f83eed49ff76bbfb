//! What a request must be before it is routed: its target in one of the forms RFC 9112 §3.2
//! allows, one `Host` on HTTP/1.1, and, over HTTP/2, field values as RFC 9113 §8.2.1 allows.
//!
//! Pingora parses a target it cannot place (`admin`, `./admin`, `x/../admin`) as the path `/`
//! and keeps the bytes verbatim for the upstream's request line: routed as `/`, such a request
//! skips the rules of the path the upstream may resolve it to. Here it is refused with `400`
//! before the router sees it. An absolute-form target (`http://h/admin`, what a client sends to
//! a forward proxy) is turned into origin form, its authority replacing `Host` (§3.2.2), so
//! every later step (routing, policies, the upstream request line) sees one spelling.
//!
//! The common request (origin form, one `Host`) costs a byte compare and one header lookup.

use crate::error::{self, GatewayError};
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::Authority;
use http::{HeaderValue, Uri, Version};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;

/// The form of a request target that may be served.
#[derive(Debug, PartialEq, Eq)]
pub enum Form<'a> {
    /// `/path?query`, the common case.
    Origin,
    /// `*`, with `OPTIONS`.
    Asterisk,
    /// `http://authority/path?query`.
    Absolute {
        authority: &'a [u8],
        path_and_query: &'a [u8],
    },
}

/// Place a request target (RFC 9112 §3.2), given its method and `Host` (if any). An
/// absolute-form target's authority must be one `Host` would accept, and match `Host` when
/// both are sent: Pingora refuses a mismatch too, since two parsers could each pick one.
pub fn form<'a>(
    method: &[u8],
    target: &'a [u8],
    host: Option<&[u8]>,
) -> Result<Form<'a>, GatewayError> {
    if method == b"CONNECT" {
        // Pylon is not a forward proxy: no tunnels to an authority.
        return Err(error::METHOD_NOT_ALLOWED);
    }
    match target.first() {
        Some(b'/') => return Ok(Form::Origin),
        Some(b'*') if target == b"*" && method == b"OPTIONS" => return Ok(Form::Asterisk),
        _ => {}
    }
    let RawTargetAuthority::Absolute {
        scheme,
        authority,
        path_and_query,
    } = raw_target_authority(target)
    else {
        return Err(error::BAD_REQUEST);
    };
    let web = scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https");
    let placed = web
        && !authority.contains(&b'@')
        && Authority::try_from(authority).is_ok()
        && host.is_none_or(|h| h == authority);
    match placed {
        true => Ok(Form::Absolute {
            authority,
            path_and_query,
        }),
        false => Err(error::BAD_REQUEST),
    }
}

/// Check `req` (after Pingora parsed it) and bring an absolute-form target to origin form.
/// `head_checked`: `head.rs` has held the raw head to one `Host` and one run of digits in
/// `content-length` already (every HTTP/1 head but the longest), so those are not looked up
/// again.
pub fn check(req: &mut RequestHeader, head_checked: bool) -> Result<(), GatewayError> {
    if !head_checked && !fields_fine(req) {
        return Err(error::BAD_REQUEST);
    }
    if req.raw_path().first() != Some(&b'/') {
        let host = req.headers.get(HOST).map(HeaderValue::as_bytes);
        if let Form::Absolute {
            authority,
            path_and_query,
        } = form(req.method.as_str().as_bytes(), req.raw_path(), host)?
        {
            let (authority, path_and_query) = (authority.to_vec(), path_and_query.to_vec());
            to_origin_form(req, &authority, &path_and_query)?;
        }
    }
    Ok(())
}

/// What `head.rs` holds a raw HTTP/1 head to, for a request it did not see: HTTP/1.1 has
/// exactly one `Host`; `content-length` is one run of digits (not a list Pingora reconciled,
/// `10, 010`); and over HTTP/2 no value has leading or trailing whitespace.
fn fields_fine(req: &RequestHeader) -> bool {
    let mut hosts = req.headers.get_all(HOST).iter();
    let (host, second) = (hosts.next(), hosts.next());
    if req.version == Version::HTTP_11 && (host.is_none() || second.is_some()) {
        return false;
    }
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        let digits = length.as_bytes();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || lengths.next().is_some() {
            return false;
        }
    }
    !(req.version == Version::HTTP_2 && req.headers.values().any(padded))
}

/// The target as origin form, its authority as `Host`.
fn to_origin_form(
    req: &mut RequestHeader,
    authority: &[u8],
    path_and_query: &[u8],
) -> Result<(), GatewayError> {
    let host = HeaderValue::from_bytes(authority).map_err(|_| error::BAD_REQUEST)?;
    let origin = match path_and_query.first() {
        Some(b'/') => Uri::try_from(path_and_query),
        // `http://h` and `http://h?q`: origin form needs at least `/` (RFC 9112 §3.2.1).
        _ => Uri::try_from([b"/", path_and_query].concat()),
    }
    .map_err(|_| error::BAD_REQUEST)?;
    req.set_uri(origin);
    req.insert_header(HOST, host)
        .map_err(|_| error::BAD_REQUEST)?;
    Ok(())
}

/// A field value with leading or trailing whitespace: malformed over HTTP/2 (RFC 9113
/// §8.2.1), and read differently by the HTTP/1 parsers it may be forwarded to. (NUL, CR and LF
/// never reach a `HeaderValue`.)
fn padded(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
}

/// The request's `content-length` as the upstream gets it: without leading zeros, which
/// some parsers read as octal (`010` is 8 to them, 10 to Pylon, and the two disagree on where
/// the next request starts). [`check`] has made sure it is one run of digits.
pub fn canonical_length(upstream: &mut RequestHeader) {
    let Some(v) = upstream.headers.get(CONTENT_LENGTH) else {
        return;
    };
    let digits = v.as_bytes();
    if digits.len() < 2 || digits[0] != b'0' {
        return;
    }
    let start = digits
        .iter()
        .position(|d| *d != b'0')
        .unwrap_or(digits.len() - 1);
    if let Ok(canonical) = HeaderValue::from_bytes(&digits[start..]) {
        // Replacing a value cannot overflow the map.
        let _ = upstream.insert_header(CONTENT_LENGTH, canonical);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, target, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn verdict(method: &str, target: &[u8], headers: &[(&str, &str)]) -> Result<(), u16> {
        check(&mut req(method, target, headers), false).map_err(|e| e.status)
    }

    #[test]
    fn origin_and_asterisk_forms_pass() {
        assert_eq!(verdict("GET", b"/admin", &[("host", "a")]), Ok(()));
        assert_eq!(verdict("GET", b"/", &[("host", "a")]), Ok(()));
        assert_eq!(verdict("OPTIONS", b"*", &[("host", "a")]), Ok(()));
    }

    #[test]
    fn targets_that_are_no_form_are_refused() {
        for target in [
            &b"admin"[..],
            b"./admin",
            b"x/../admin",
            b"?admin",
            b"*",
            b"h:80",
            b"ftp://h/admin",
            b"http://u@h/admin",
            b"http:///admin",
            b"http:/admin",
            b"http://other/admin",
        ] {
            assert_eq!(
                verdict("GET", target, &[("host", "a")]),
                Err(400),
                "{}",
                String::from_utf8_lossy(target)
            );
        }
        assert_eq!(verdict("CONNECT", b"h:443", &[("host", "h:443")]), Err(405));
        assert_eq!(verdict("GET", b"http://a/x", &[("host", "a")]), Ok(()));
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_authority_as_host() {
        let mut r = req(
            "GET",
            b"http://api.example:8080/admin?x=1",
            &[("host", "api.example:8080")],
        );
        check(&mut r, false).unwrap();
        assert_eq!(r.raw_path(), b"/admin?x=1");
        assert_eq!(r.uri.path(), "/admin");
        assert_eq!(r.headers.get_all(HOST).iter().count(), 1);
        assert_eq!(r.headers[HOST], "api.example:8080");
        let mut r = req("GET", b"HTTPS://h?q", &[("host", "h")]);
        check(&mut r, false).unwrap();
        assert_eq!(r.raw_path(), b"/?q");
        assert_eq!(r.headers[HOST], "h");
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(verdict("GET", b"/", &[]), Err(400));
        assert_eq!(
            verdict("GET", b"/", &[("host", "a"), ("host", "b")]),
            Err(400)
        );
        let mut old = req("GET", b"/", &[]);
        old.set_version(Version::HTTP_10);
        assert_eq!(check(&mut old, false), Ok(()));
    }

    #[test]
    fn h2_values_with_surrounding_whitespace_are_refused() {
        let mut r = req("GET", b"/", &[("x-a", " padded")]);
        r.set_version(Version::HTTP_2);
        assert_eq!(check(&mut r, false), Err(error::BAD_REQUEST));
        let mut r = req("GET", b"/", &[("x-a", "padded\t")]);
        r.set_version(Version::HTTP_2);
        assert_eq!(check(&mut r, false), Err(error::BAD_REQUEST));
        let mut r = req("GET", b"/", &[("x-a", "in side")]);
        r.set_version(Version::HTTP_2);
        assert_eq!(check(&mut r, false), Ok(()));
    }

    #[test]
    fn a_content_length_is_one_run_of_digits() {
        assert_eq!(
            verdict("POST", b"/", &[("host", "a"), ("content-length", "010")]),
            Ok(())
        );
        for bad in ["10, 010", "+1", "", "1 "] {
            let h = [("host", "a"), ("content-length", bad)];
            assert_eq!(verdict("POST", b"/", &h), Err(400), "{bad:?}");
        }
        let two = [
            ("host", "a"),
            ("content-length", "1"),
            ("content-length", "1"),
        ];
        assert_eq!(verdict("POST", b"/", &two), Err(400));
    }

    #[test]
    fn content_length_goes_upstream_without_leading_zeros() {
        for (sent, forwarded) in [("010", "10"), ("0", "0"), ("000", "0"), ("10", "10")] {
            let mut r = req("POST", b"/", &[("content-length", sent)]);
            canonical_length(&mut r);
            assert_eq!(r.headers[CONTENT_LENGTH], forwarded, "{sent}");
        }
    }
}
