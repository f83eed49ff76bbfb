//! `response_transform`: the response as the client gets it. The status and body are edited
//! on proxied responses only; header edits apply to every response of the route, the
//! gateway's own included.

use super::body::{BodyEdits, Buffer, Refused};
use super::edits::HeaderEdits;
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply};
use crate::plumbing;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::StatusCode;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::ErrorType::HTTPStatus;

pub struct ResponseTransform {
    pub headers: HeaderEdits,
    pub status: Option<StatusCode>,
    pub body: Option<BodyEdits>,
}

/// The response body, being collected.
struct Collecting(Buffer);

/// The target's answer cannot be edited within `max_body`: a 502, through the one writer.
fn too_large(cx: &mut Context) -> Box<pingora::Error> {
    cx.pending = Some(Reply::error(error::BAD_GATEWAY));
    pingora::Error::explain(
        HTTPStatus(502),
        "response body beyond the transform's max_body",
    )
}

#[async_trait]
impl Filter for ResponseTransform {
    fn phases(&self) -> Phases {
        let mut phases = Phases::empty();
        if !self.headers.is_empty() {
            phases |= Phases::RESPONSE;
        }
        if self.status.is_some() || self.body.is_some() {
            phases |= Phases::UPSTREAM_RESPONSE;
        }
        if self.body.is_some() {
            phases |= Phases::RESPONSE_BODY;
        }
        phases
    }

    fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let bodiless = matches!(resp.status.as_u16(), 204 | 304);
        if let Some(status) = self.status {
            resp.set_status(status)?;
        }
        let Some(body) = self.body.as_ref().filter(|_| !bodiless) else {
            return Ok(());
        };
        let declared = resp
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > body.max_body as u64) {
            return Err(too_large(cx));
        }
        let Some(buffer) = body.start(&resp.headers) else {
            return Ok(());
        };
        plumbing::streamed(resp)?;
        if buffer.decodes() {
            resp.remove_header(&CONTENT_ENCODING);
        }
        if let Some(ct) = body.output_type() {
            resp.insert_header(CONTENT_TYPE, ct)?;
        }
        cx.state.insert(Collecting(buffer));
        Ok(())
    }

    fn response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let values = self.headers.values(req, cx);
        let edits = &self.headers;
        crate::headers::edit_response(resp, edits.adds(), |h| edits.apply(h, values))
    }

    fn response_body(
        &self,
        chunk: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let (Some(body), Some(Collecting(buffer))) = (&self.body, cx.state.get_mut()) else {
            return Ok(());
        };
        let data = chunk.as_deref().unwrap_or(&[]);
        match buffer.push(data, end) {
            Ok(()) => {}
            Err(Refused::TooLarge) => return Err(too_large(cx)),
            Err(Refused::Corrupt) => {
                cx.pending = Some(Reply::error(error::BAD_GATEWAY));
                return Err(pingora::Error::explain(
                    HTTPStatus(502),
                    "corrupt compressed response body",
                ));
            }
        }
        *chunk = end.then(|| body.finish(buffer.take()));
        if end {
            cx.state.remove::<Collecting>();
        }
        Ok(())
    }
}
