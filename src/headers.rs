//! Header edits that skip Pingora's per-insert name handling.
//!
//! `RequestHeader::insert_header` parses the name again on every call and, for a name outside
//! the `http` crate's standard table (every `x-` header), copies it into a new buffer; with a
//! case map (which every parsed request has) it inserts into two maps, each growing on its own.
//! Pingora hands the `HeaderMap` out read-only, so these edits take the parts out, edit the
//! plain map with prebuilt [`HeaderName`]s (cloning a static name copies nothing), growing it
//! once, and put them back without a case map.
//!
//! So header names go upstream in lower case (Pingora's standard few in title case), as Envoy
//! and HAProxy send them, and to clients likewise; names are case-insensitive (RFC 9110 5.1).
//! The request target as received (absolute-form, a path that is not UTF-8), the HTTP/2
//! end-of-stream flag and a response's own reason phrase are kept.

use http::header::MaxSizeReached;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType, OrErr};

/// Run `edit` on the headers of `req`, with room reserved for `adds` more. A map that would
/// outgrow the `http` crate's limit is an invalid header, as Pingora's own inserts report it.
pub fn edit_request<R>(
    req: &mut RequestHeader,
    adds: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<R, MaxSizeReached>,
) -> pingora::Result<R> {
    let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    let verbatim = (from_uri != Some(req.raw_path())).then(|| req.raw_path().to_vec());
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    parts.headers.reserve(adds);
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = verbatim {
        req.set_raw_path(&raw)?;
    }
    if end_stream == Some(false) {
        req.set_send_end_stream(false);
    }
    out.or_err(ErrorType::InvalidHTTPHeader, "too many request headers")
}

/// Run `edit` on the headers of `resp`, with room reserved for `adds` more.
pub fn edit_response<R>(
    resp: &mut ResponseHeader,
    adds: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<R, MaxSizeReached>,
) -> pingora::Result<R> {
    let reason = resp.get_reason_phrase();
    let reason = (reason != resp.status.canonical_reason()).then(|| reason.map(str::to_owned));
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    parts.headers.reserve(adds);
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if let Some(reason) = reason {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    out.or_err(ErrorType::InvalidHTTPHeader, "too many response headers")
}

/// The `Host` a request named: its header, or the authority of an absolute URI.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The value of cookie `name` in the request's `Cookie` headers, the first if several.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue, Method};

    const X_ADDED: HeaderName = HeaderName::from_static("x-added");

    fn parsed(target: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build(Method::GET, target, None).unwrap();
        req.insert_header("X-Kept", "1").unwrap();
        req
    }

    #[test]
    fn headers_are_edited_and_kept() {
        let mut req = parsed(b"/a?b=c");
        edit_request(&mut req, 1, |h| {
            h.try_insert(X_ADDED, HeaderValue::from_static("2"))
        })
        .unwrap();
        assert_eq!(req.headers["x-kept"], "1");
        assert_eq!(req.headers["x-added"], "2");
        assert_eq!(req.raw_path(), b"/a?b=c");
        assert!(!req.has_case());
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(
            wire.contains("x-kept: 1\r\n") && wire.contains("x-added: 2\r\n"),
            "{wire}"
        );
    }

    #[test]
    fn a_target_the_uri_does_not_round_trip_is_kept() {
        for target in [&b"http://example.org/p?q"[..], b"/caf\xc3\xa9", b"/\xff"] {
            let mut req = parsed(target);
            let before = req.raw_path().to_vec();
            edit_request(&mut req, 0, |_| Ok(())).unwrap();
            assert_eq!(
                req.raw_path(),
                before,
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn a_response_keeps_its_own_reason_phrase() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        resp.insert_header("X-Kept", "1").unwrap();
        edit_response(&mut resp, 1, |h| {
            h.try_insert(X_ADDED, HeaderValue::from_static("2"))
        })
        .unwrap();
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.headers["x-kept"], "1");
        assert_eq!(resp.headers["x-added"], "2");
        let mut plain = ResponseHeader::build(404, None).unwrap();
        edit_response(&mut plain, 0, |_| Ok(())).unwrap();
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
    }

    #[test]
    fn the_h2_end_of_stream_flag_is_kept() {
        let mut req = parsed(b"/");
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        edit_request(&mut req, 0, |_| Ok(())).unwrap();
        assert_eq!(req.send_end_stream(), Some(false));
    }
}
