//! The raw request head, checked before Pingora parses it.
//!
//! Two reasons to look at the bytes first. Pingora lets some heads through that a gateway must
//! refuse, because the next parser in line may read them differently (request smuggling):
//! `content-length` together with `transfer-encoding`, repeated `content-length` (even equal),
//! a `transfer-encoding` other than one final `chunked`, line ends that are a bare LF. And the
//! heads Pingora does refuse get its own plain-text 400 with `Server: Pingora`, which names the
//! engine to a scanner and is not the contract's JSON. So every HTTP/1.1 head is parsed here,
//! with `httparse` as Pingora does, once the keep-alive loop has read it whole (nearly always in
//! one read; a head in pieces, a pipelined one, is read on up to 64 KiB), and refused in the
//! contract's shape: `400 bad_request`, or `431 request_header_too_large` for a header of more
//! lines than Pingora accepts. A longer head goes to Pingora unchecked by this.
//! The first chunk size of a chunked body that came with its head is checked too: Pingora
//! refuses a bad one only when it reads the body, after the target has the request's head.

use crate::conform;
use crate::error::{self, GatewayError};
use crate::ids::RequestId;
use bytes::Bytes;
use bytes::BytesMut;
use percent_encoding::{percent_encode, AsciiSet, CONTROLS};
use std::mem::MaybeUninit;
use std::ops::Range;

/// The most header lines Pingora parses.
const MAX_HEADERS: usize = 256;

/// What to do with a connection's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A whole head that passed: hand it to Pingora. With the request's whole length (head
    /// and body) when its framing tells it (no body, or a `content-length`); `None` when
    /// chunked.
    Fine(Option<usize>),
    /// Not all of the head has arrived: Pingora reads the rest.
    Partial,
    /// A head that passes once the request target at this range is percent-encoded
    /// ([`encode_target`]).
    Encode(Range<usize>),
    /// Answer with this error and close the connection.
    Refuse(GatewayError),
}

/// Check the start of a request.
pub fn check(bytes: &[u8]) -> Verdict {
    // Uninitialized: zeroing 256 slots would cost more than parsing a typical head.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let end = match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => {
            return match bare_lf(bytes) {
                true => Verdict::Refuse(error::BAD_REQUEST),
                false => Verdict::Partial,
            }
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Verdict::Refuse(error::REQUEST_HEADER_TOO_LARGE)
        }
        Err(_) => return Verdict::Refuse(error::BAD_REQUEST),
    };
    let Some(body) =
        framing(req.headers, req.version == Some(1)).filter(|_| !bare_lf(&bytes[..end]))
    else {
        return Verdict::Refuse(error::BAD_REQUEST);
    };
    // Targets other than origin form: refused here in the contract's shape, where Pingora
    // would refuse some with its own.
    let target = req.path.unwrap_or_default().as_bytes();
    if target.first() != Some(&b'/') {
        let host = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| h.value);
        let method = req.method.unwrap_or_default().as_bytes();
        if let Err(e) = conform::form(method, target, host) {
            return Verdict::Refuse(e);
        }
    } else if needs_encoding(target) {
        let start = target.as_ptr() as usize - bytes.as_ptr() as usize;
        return Verdict::Encode(start..start + target.len());
    }
    match body {
        Body::Chunked if !first_chunk_fine(&bytes[end..]) => Verdict::Refuse(error::BAD_REQUEST),
        Body::Chunked => Verdict::Fine(None),
        Body::Length(n) => Verdict::Fine(usize::try_from(n).ok().and_then(|n| n.checked_add(end))),
    }
}

/// How a head that passed frames its body.
enum Body {
    /// `content-length` (0 when absent).
    Length(u64),
    Chunked,
}

/// The first chunk-size line of a chunked body, when it arrived with the head: 1 to 16 hex
/// digits (it must fit 64 bits), then optional extensions after `;`. Pingora refuses a bad one
/// too, but only when it reads the body, after the target has the request's head.
fn first_chunk_fine(body: &[u8]) -> bool {
    let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
        return true;
    };
    let line = &body[..eol];
    let size = line.split(|b| *b == b';').next().unwrap_or(&[]);
    let size = size.trim_ascii_end();
    !size.is_empty() && size.len() <= 16 && size.iter().all(u8::is_ascii_hexdigit)
}

/// What a browser percent-encodes (WHATWG URL's path and query sets) and Pingora's URI type
/// refuses: `<`, `>` and `` ` `` in the path, `"`, `<` and `>` in the query. curl, scanners and
/// some clients send them as they are; nginx and ModSecurity take them. Such a target is taken
/// as a browser would have sent it, instead of Pingora's plain 400.
const PATH_ENCODED: &AsciiSet = &CONTROLS.add(b'<').add(b'>').add(b'`');
const QUERY_ENCODED: &AsciiSet = &CONTROLS.add(b'"').add(b'<').add(b'>');

/// The target's path and its query (from `?`).
fn path_and_query(target: &[u8]) -> (&[u8], &[u8]) {
    target.split_at(memchr::memchr(b'?', target).unwrap_or(target.len()))
}

/// Whether an origin-form target holds bytes of [`PATH_ENCODED`] or [`QUERY_ENCODED`].
fn needs_encoding(target: &[u8]) -> bool {
    let (path, query) = path_and_query(target);
    path.iter().any(|b| matches!(b, b'<' | b'>' | b'`'))
        || query.iter().any(|b| matches!(b, b'"' | b'<' | b'>'))
}

/// Percent-encode the request target at `at` as [`needs_encoding`] asks.
pub fn encode_target(bytes: &mut BytesMut, at: Range<usize>) {
    let (path, query) = path_and_query(&bytes[at.clone()]);
    let mut out = BytesMut::with_capacity(bytes.len() + 3 * (at.end - at.start));
    out.extend_from_slice(&bytes[..at.start]);
    for piece in percent_encode(path, PATH_ENCODED).chain(percent_encode(query, QUERY_ENCODED)) {
        out.extend_from_slice(piece.as_bytes());
    }
    out.extend_from_slice(&bytes[at.end..]);
    *bytes = out;
}

/// A line end that is an LF without its CR.
fn bare_lf(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| i == 0 || bytes[i - 1] != b'\r')
}

/// How the head frames its body; `None` for framing headers a second parser could read
/// differently, for an HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2) and for an
/// empty `Host`.
fn framing(headers: &[httparse::Header<'_>], http11: bool) -> Option<Body> {
    let mut lengths = 0;
    let mut length = 0u64;
    let mut encodings = 0;
    let mut hosts = 0;
    let mut chunked = true;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Past u64, the length is refused too (Pingora could not frame it either).
            length = std::str::from_utf8(h.value).ok()?.parse().ok()?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings += 1;
            chunked &= h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("host") {
            // An empty one names no host: an `http` URI without a host is invalid (RFC 9110
            // §4.2.1), and nginx refuses it as well.
            if h.value.trim_ascii().is_empty() {
                return None;
            }
            hosts += 1;
        }
    }
    let smuggles = lengths > 1
        || encodings > 1
        || (encodings == 1 && (!chunked || lengths > 0))
        || hosts > 1
        || (http11 && hosts == 0);
    match (smuggles, encodings) {
        (true, _) => None,
        (false, 0) => Some(Body::Length(length)),
        (false, _) => Some(Body::Chunked),
    }
}

/// The whole HTTP/1.1 answer for a refused head: the contract's JSON, no `Server`, closing.
pub fn answer(e: GatewayError) -> Bytes {
    let id = RequestId::of(&http::HeaderMap::new());
    let body = e.body(id.as_str());
    let reason = http::StatusCode::from_u16(e.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Request-Id: {}\r\nConnection: close\r\n\r\n",
        e.status,
        body.len(),
        id.as_str()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(head: &[u8]) -> Verdict {
        check(head)
    }

    #[test]
    fn ordinary_heads_pass() {
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Verdict::Fine(Some(27))
        );
        // A pipelined request behind it does not count.
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n"),
            Verdict::Fine(Some(27))
        );
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tChunked \r\n\r\n0\r\n\r\n"),
            Verdict::Fine(None)
        );
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
            Verdict::Fine(Some(50))
        );
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: "),
            Verdict::Partial
        );
        assert_eq!(
            verdict(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1a;x=y\r\n"),
            Verdict::Fine(None)
        );
    }

    /// The head after the target is encoded, and what the encoded head is judged.
    fn encoded(head: &[u8]) -> (String, Verdict) {
        let Verdict::Encode(at) = verdict(head) else {
            panic!("{:?} not to be encoded", String::from_utf8_lossy(head));
        };
        let mut bytes = BytesMut::from(head);
        encode_target(&mut bytes, at);
        let verdict = verdict(&bytes);
        (String::from_utf8_lossy(&bytes).into_owned(), verdict)
    }

    #[test]
    fn targets_pingora_refuses_are_percent_encoded_as_a_browser_would() {
        let (head, v) = encoded(b"GET /a<b>`c?q=\"<x>`&r={} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            head,
            "GET /a%3Cb%3E%60c?q=%22%3Cx%3E`&r={} HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        assert_eq!(v, Verdict::Fine(Some(head.len())));
        // A target that is not UTF-8 is refused as httparse refuses it, in the contract's shape.
        assert_eq!(
            verdict(b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Verdict::Refuse(error::BAD_REQUEST)
        );
        // What Pingora takes is left as it came: `"` in a path, UTF-8, a backtick in a query.
        let fine = b"GET /a\"b/\xc3\xa9?q=`{}| HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdict(fine), Verdict::Fine(Some(fine.len())));
    }

    #[test]
    fn smuggling_heads_are_refused() {
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc",
            b"GET admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://b/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://u@a/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"GET / HTTP/1.0\r\nHost:\r\n\r\n",
        ];
        for head in bad {
            assert_eq!(
                verdict(head),
                Verdict::Refuse(error::BAD_REQUEST),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            verdict(&many),
            Verdict::Refuse(error::REQUEST_HEADER_TOO_LARGE)
        );
    }

    #[test]
    fn the_answer_is_the_contracts_json_without_server() {
        let a = answer(error::BAD_REQUEST);
        let text = String::from_utf8_lossy(&a);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("server:"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
}
