//! `grpc_web`: browsers calling gRPC services.
//!
//! A browser cannot speak gRPC: it has no HTTP/2 trailers to read. gRPC-Web (grpc/grpc's
//! PROTOCOL-WEB.md) carries the same length-prefixed messages, and the trailers as a last frame
//! of the body, flagged `0x80`. A request sent as `application/grpc-web` (or `+proto`) goes to
//! the target as `application/grpc` over HTTP/2, its messages as they are; the answer comes
//! back as `application/grpc-web+proto`, streamed as it arrives, with the target's trailers
//! turned into that last frame. The text forms (`application/grpc-web-text`) are the same in
//! base64 both ways, decoded and encoded as the bytes pass. A trailers-only answer (the
//! gateway's own errors among them) keeps its status in the header, which gRPC-Web clients read
//! there. Requests of other types pass untouched.
//!
//! The route's upstream must speak HTTP/2 (`h2 = true`). Across origins, with a `cors` policy
//! on the route, an answer the browser may read also exposes `grpc-status` and `grpc-message`,
//! which gRPC-Web clients read from the header of a trailers-only answer.

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply};
use crate::grpc::{self, GRPC_STATUS};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, CONTENT_LENGTH, CONTENT_TYPE, TE,
};
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "grpc_web",
    parse,
};

/// No settings: the policy's presence on a route is the whole of it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcWebConfig {}

struct GrpcWebSpec {
    config: GrpcWebConfig,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: GrpcWebConfig = src.settings()?;
    Ok(Arc::new(GrpcWebSpec { config }))
}

impl Spec for GrpcWebSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(Arc::new(GrpcWeb)))
    }
}

const BINARY: HeaderValue = HeaderValue::from_static("application/grpc-web+proto");
const TEXT: HeaderValue = HeaderValue::from_static("application/grpc-web-text+proto");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
/// What a browser script must be let read of a cross-origin answer.
const EXPOSED: HeaderValue = HeaderValue::from_static("grpc-status, grpc-message");
/// The flag of the frame that carries the trailers.
const TRAILER_FRAME: u8 = 0x80;

pub struct GrpcWeb;

/// A gRPC-Web call in progress.
struct Call {
    /// The base64 text form.
    text: bool,
    /// Text requests: base64 characters of a quartet not yet complete.
    undecoded: Vec<u8>,
    /// Text answers: bytes of a triplet not yet encoded.
    unencoded: Vec<u8>,
}

impl Call {
    /// The call a request's content type makes, if it is gRPC-Web.
    fn of(req: &RequestHeader) -> Option<Call> {
        let ct = req.headers.get(CONTENT_TYPE)?.as_bytes();
        let lower = ct.to_ascii_lowercase();
        let rest = lower.strip_prefix(b"application/grpc-web")?;
        let text = rest.starts_with(b"-text");
        let form = if text { &rest[5..] } else { rest };
        (form.is_empty() || form.starts_with(b"+")).then_some(Call {
            text,
            undecoded: Vec::new(),
            unencoded: Vec::new(),
        })
    }

    /// Base64 text to bytes, keeping a quartet's start for the next chunk.
    fn decode(&mut self, chunk: &[u8]) -> Option<Bytes> {
        self.undecoded
            .extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.undecoded.len() / 4 * 4;
        let out = STANDARD.decode(&self.undecoded[..whole]).ok()?;
        self.undecoded.drain(..whole);
        Some(out.into())
    }

    /// Bytes to base64 text, keeping a triplet's start for the next chunk unless `last`.
    fn encode(&mut self, chunk: &[u8], last: bool) -> Bytes {
        self.unencoded.extend_from_slice(chunk);
        let whole = match last {
            true => self.unencoded.len(),
            false => self.unencoded.len() / 3 * 3,
        };
        let out = STANDARD.encode(&self.unencoded[..whole]);
        self.unencoded.drain(..whole);
        out.into()
    }
}

/// The trailers as gRPC-Web's last frame: `0x80`, the length, `name: value` lines.
fn trailer_frame(trailers: &HeaderMap) -> BytesMut {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(TRAILER_FRAME);
    frame.put_u32(block.len() as u32);
    frame.extend_from_slice(&block);
    frame
}

#[async_trait]
impl Filter for GrpcWeb {
    fn phases(&self) -> Phases {
        Phases::REQUEST
            | Phases::REQUEST_BODY
            | Phases::UPSTREAM_REQUEST
            | Phases::RESPONSE
            | Phases::RESPONSE_BODY
            | Phases::RESPONSE_TRAILERS
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        if let Some(call) = Call::of(req) {
            cx.state.insert(call);
        }
        Ok(())
    }

    async fn request_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(call) = cx.state.get_mut::<Call>().filter(|c| c.text) else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            *body = Some(
                call.decode(&chunk)
                    .ok_or(Reply::error(error::BAD_REQUEST))?,
            );
        }
        if end && !call.undecoded.is_empty() {
            return Err(Reply::error(error::BAD_REQUEST));
        }
        Ok(())
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &mut Context) -> pingora::Result<()> {
        let Some(call) = cx.state.get::<Call>() else {
            return Ok(());
        };
        let text = call.text;
        crate::headers::edit_request(req, 2, |h| {
            h.try_insert(CONTENT_TYPE, grpc::CONTENT_TYPE_GRPC)?;
            h.try_insert(TE, TRAILERS)?;
            if text {
                // Decoded, the body is shorter.
                h.remove(CONTENT_LENGTH);
            }
            Ok(())
        })
    }

    fn response(
        &self,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let Some(call) = cx.state.get::<Call>() else {
            return Ok(());
        };
        let content_type = if call.text { TEXT } else { BINARY };
        // A trailers-only answer has no body to grow; any other gets the trailer frame.
        let framed = !resp.headers.contains_key(GRPC_STATUS);
        // CORS ran first (it places itself ahead): what it exposes, and the status.
        let exposed = resp
            .headers
            .contains_key(ACCESS_CONTROL_ALLOW_ORIGIN)
            .then(|| match resp.headers.get(ACCESS_CONTROL_EXPOSE_HEADERS) {
                Some(v) => {
                    let mut list = v.as_bytes().to_vec();
                    list.extend_from_slice(b", ");
                    list.extend_from_slice(EXPOSED.as_bytes());
                    HeaderValue::from_bytes(&list).unwrap_or(EXPOSED)
                }
                None => EXPOSED,
            });
        crate::headers::edit_response(resp, 2, |h| {
            h.try_insert(CONTENT_TYPE, content_type)?;
            if framed {
                h.remove(CONTENT_LENGTH);
            }
            if let Some(exposed) = exposed {
                h.try_insert(ACCESS_CONTROL_EXPOSE_HEADERS, exposed)?;
            }
            Ok(())
        })
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let Some(call) = cx.state.get_mut::<Call>().filter(|c| c.text) else {
            return Ok(());
        };
        let chunk = body.take().unwrap_or_default();
        let text = call.encode(&chunk, end);
        *body = (!text.is_empty()).then_some(text);
        Ok(())
    }

    fn response_trailers(&self, trailers: &HeaderMap, cx: &mut Context) -> Option<Bytes> {
        let call = cx.state.get_mut::<Call>()?;
        let frame = trailer_frame(trailers);
        Some(match call.text {
            true => call.encode(&frame, true),
            false => frame.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ct: &str) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/s/M", None).unwrap();
        req.insert_header("content-type", ct).unwrap();
        req
    }

    #[test]
    fn grpc_web_content_types() {
        for (ct, text) in [
            ("application/grpc-web", Some(false)),
            ("application/grpc-web+proto", Some(false)),
            ("application/grpc-web-text", Some(true)),
            ("Application/gRPC-Web-Text+proto", Some(true)),
            ("application/grpc", None),
            ("application/grpc-webby", None),
            ("application/json", None),
        ] {
            assert_eq!(Call::of(&request(ct)).map(|c| c.text), text, "{ct}");
        }
    }

    #[test]
    fn base64_across_chunks_both_ways() {
        let mut call = Call::of(&request("application/grpc-web-text")).unwrap();
        let message = b"\x00\x00\x00\x00\x05hello";
        let text = STANDARD.encode(message);
        let (a, b) = text.as_bytes().split_at(5);
        let mut got = call.decode(a).unwrap().to_vec();
        got.extend_from_slice(&call.decode(b).unwrap());
        assert_eq!(got, message);
        assert!(call.decode(b"!!!!").is_none());
        let mut out = call.encode(&message[..4], false).to_vec();
        out.extend_from_slice(&call.encode(&message[4..], true));
        assert_eq!(STANDARD.decode(out).unwrap(), message);
    }

    #[test]
    fn the_trailer_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let frame = trailer_frame(&t);
        assert_eq!(frame[0], 0x80);
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(&frame[5..], b"grpc-status: 0\r\ngrpc-message: ok\r\n");
        assert_eq!(len, frame.len() - 5);
    }
}
