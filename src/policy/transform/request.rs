//! `request_transform`: the request as the target gets it.

use super::body::{BodyEdits, Buffer, Refused};
use super::edits::{HeaderEdits, QueryEdits};
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::Method;
use pingora::http::RequestHeader;

pub struct RequestTransform {
    pub headers: HeaderEdits,
    pub query: QueryEdits,
    pub method: Option<Method>,
    pub body: Option<BodyEdits>,
}

/// The body being collected for its edit.
struct Collecting(Buffer);

/// The body was edited: the header says what it now is.
struct Edited {
    /// It was decompressed to be edited, and goes upstream plain.
    decoded: bool,
}

/// The declared body length, if the request declares one.
fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[async_trait]
impl Filter for RequestTransform {
    fn phases(&self) -> Phases {
        match self.body {
            Some(_) => Phases::REQUEST | Phases::UPSTREAM_REQUEST | Phases::REQUEST_BODY,
            None => Phases::UPSTREAM_REQUEST,
        }
    }

    /// The whole body is read, edited and sent with its new length before the target is
    /// contacted (`crate::held_body`).
    fn holds_body(&self) -> usize {
        self.body.as_ref().map_or(0, |b| b.max_body)
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let Some(body) = &self.body else {
            return Ok(());
        };
        let declared = content_length(req);
        if declared.is_some_and(|n| n > body.max_body as u64) {
            return Err(Reply::error(error::PAYLOAD_TOO_LARGE));
        }
        let has_body =
            declared.is_some_and(|n| n > 0) || req.headers.contains_key(TRANSFER_ENCODING);
        if let Some(buffer) = has_body.then(|| body.start(&req.headers)).flatten() {
            cx.state.insert(Collecting(buffer));
        }
        Ok(())
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &mut Context) -> pingora::Result<()> {
        // The body's length is set with the body (`crate::held_body`); its kind here.
        if let (Some(body), Some(Edited { decoded })) = (&self.body, cx.state.get::<Edited>()) {
            if *decoded {
                req.remove_header(&CONTENT_ENCODING);
            }
            if let Some(ct) = body.output_type() {
                req.insert_header(CONTENT_TYPE, ct)?;
            }
        }
        if !self.headers.is_empty() {
            let values = self.headers.values(req, cx);
            let edits = &self.headers;
            crate::headers::edit_request(req, edits.adds(), |h| edits.apply(h, values))?;
        }
        if !self.query.is_empty() {
            self.query.apply(req, cx)?;
        }
        if let Some(m) = &self.method {
            req.set_method(m.clone());
        }
        Ok(())
    }

    async fn request_body(
        &self,
        chunk: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let (Some(body), Some(Collecting(buffer))) = (&self.body, cx.state.get_mut()) else {
            return Ok(());
        };
        let data = chunk.as_deref().unwrap_or(&[]);
        buffer.push(data, end).map_err(|why| match why {
            Refused::TooLarge => Reply::error(error::PAYLOAD_TOO_LARGE),
            Refused::Corrupt => Reply::error(error::BAD_REQUEST),
        })?;
        if !end {
            // Nothing goes out until the body is whole (an empty chunk is not sent).
            *chunk = Some(Bytes::new());
            return Ok(());
        }
        let decoded = buffer.decodes();
        *chunk = Some(body.finish(buffer.take()));
        cx.state.remove::<Collecting>();
        cx.state.insert(Edited { decoded });
        Ok(())
    }
}
