//! The one writer of the gateway's own responses: errors, fixed `respond` answers, and whatever
//! a filter answers itself (a 401, a 429).
//!
//! Proxied and gateway-written responses end the same way, in [`finish`]: the request id is set
//! and the response-phase filters run (the route's, or the global policies' for a request that
//! matched no route), so a CORS or security-header policy sees every response the client gets.

use crate::filter::{Body, Chain, Context, Reply};
use crate::plumbing::titled;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

/// Run `f` with the chain whose response phases apply to this request: the route's, or the
/// global policies' when it matched none.
fn with_chain<T>(cx: &mut Context, f: impl FnOnce(&Chain, &mut Context) -> T) -> Option<T> {
    if let Some(route) = cx.route.clone() {
        return Some(f(&route.chain, cx));
    }
    let snapshot = cx.snapshot.clone()?;
    Some(f(&snapshot.global, cx))
}

/// Finish a response header for the client: the request id, then the response-phase filters.
pub fn finish(resp: &mut ResponseHeader, cx: &mut Context) -> Result<()> {
    resp.insert_header(titled::X_REQUEST_ID, cx.request_id.header())?;
    with_chain(cx, |chain, cx| chain.response(resp, cx)).unwrap_or(Ok(()))
}

/// Run the response-body filters over one chunk of a response.
pub fn body(body: &mut Option<Bytes>, end: bool, cx: &mut Context) -> Result<()> {
    with_chain(cx, |chain, cx| {
        if chain.has_response_body() {
            chain.response_body(body, end, cx)
        } else {
            Ok(())
        }
    })
    .unwrap_or(Ok(()))
}

/// Write `reply` as the whole response.
pub async fn send(session: &mut Session, cx: &mut Context, reply: Reply) -> Result<()> {
    let (body, error) = match reply.body {
        Body::Error(e) => (e.body(cx.request_id.as_str()), true),
        Body::Fixed(b) => (b, false),
    };
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 5))?;
    for (name, value) in reply.headers {
        resp.append_header(name, value)?;
    }
    if error {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    }
    finish(&mut resp, cx)?;
    let mut body = Some(body);
    self::body(&mut body, true, cx)?;
    let len = body.as_ref().map_or(0, Bytes::len);
    resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(body, true).await
}
