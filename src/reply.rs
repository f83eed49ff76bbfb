//! The one writer of the gateway's own responses: errors, fixed `respond` answers, and whatever
//! a filter answers itself (a 401, a 429).
//!
//! Proxied and gateway-written responses end the same way, in [`finish`]: the request id is set
//! and the response-phase filters run, so a CORS or security-header policy sees every response
//! the client gets. Each function takes the chain whose response phases apply: the route's, or
//! the global policies' for a request that matched no route (`None` before any configuration).
//!
//! A gRPC client reads `grpc-status`, not the HTTP status, so to a gRPC call an error (or a
//! gRPC route's fallback) goes out as a trailers-only response: HTTP 200 with the status and
//! message in its one header block and no body (`../shared/CONTRACT.md`).

use crate::filter::{Body, Chain, Context, Phases, Reply};
use crate::grpc::{self, Code, GRPC_MESSAGE, GRPC_STATUS};
use crate::ids::X_REQUEST_ID;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::HttpTask;
use pingora_proxy::Session;

/// Finish a proxied response header for the client: hop-by-hop headers out, the request id
/// in, then the response-phase filters.
pub fn finish(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    chain: Option<&Chain>,
    cx: &mut Context,
) -> Result<()> {
    let id = cx.request_id.header();
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    crate::headers::edit_response(resp, 1, |h| {
        crate::plumbing::strip_hop_by_hop_response(h, upgrade);
        h.try_insert(X_REQUEST_ID, id)
    })?;
    match chain.filter(|c| c.has(Phases::RESPONSE)) {
        Some(chain) if !interim(resp) => chain.response(req, resp, cx),
        _ => Ok(()),
    }
}

/// A `100 Continue` or `103 Early Hints` before the real response: filters run on the final
/// one only. (`101` is final: the protocol switches.)
pub fn interim(resp: &ResponseHeader) -> bool {
    resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Run the response-body filters over one chunk of a response.
pub fn body(
    body: &mut Option<Bytes>,
    end: bool,
    chain: Option<&Chain>,
    cx: &mut Context,
) -> Result<()> {
    match chain.filter(|c| c.has(Phases::RESPONSE_BODY)) {
        Some(chain) => chain.response_body(body, end, cx),
        None => Ok(()),
    }
}

/// Write `reply` as the whole response. A composed body (an aggregate's) is the route's own
/// answer, so the chain's upstream-response phase sees it too.
pub async fn send(
    session: &mut Session,
    chain: Option<&Chain>,
    cx: &mut Context,
    reply: Reply,
) -> Result<()> {
    crate::keepalive::before_answer(session.as_mut());
    if let (true, Some((code, message))) = (cx.grpc, grpc_status(&reply.body)) {
        return send_grpc(session, chain, cx, reply.headers, code, message).await;
    }
    let (body, error, composed) = match reply.body {
        Body::Error(e) => (e.body(cx.request_id.as_str()), true, false),
        Body::Fixed(b) => (b, false, false),
        Body::Composed(b) => (b, false, true),
        Body::Grpc(code, _) => (Bytes::from(code.name()), false, false),
    };
    // Straight into the header map (`crate::headers`); `Body` is an error or composed, not both.
    let mut resp = ResponseHeader::build_no_case(reply.status, None)?;
    crate::headers::edit_response(&mut resp, reply.headers.len() + 4, |h| {
        for (name, value) in reply.headers {
            h.try_append(name, value)?;
        }
        if error {
            h.try_insert(http::header::CONTENT_TYPE, crate::error::JSON)?;
            h.try_insert(http::header::CACHE_CONTROL, crate::error::NO_STORE)?;
        }
        Ok(())
    })?;
    if let Some(chain) = chain.filter(|c| composed && c.has(Phases::UPSTREAM_RESPONSE)) {
        chain.upstream_response(&mut resp, cx)?;
    }
    finish(session.req_header(), &mut resp, chain, cx)?;
    let mut body = Some(body);
    self::body(&mut body, true, chain, cx)?;
    // The whole body is known here, whatever the filters did to it (a compression filter
    // streams it): frame it by its length. A 204 or 304 has none.
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    if !matches!(reply.status, 204 | 304) {
        let len = body.as_ref().map_or(0, Bytes::len);
        resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(body, true).await
}

/// What an answer tells a gRPC client: an error or a gRPC fallback, as a status. Other answers
/// (a `respond` route's, an aggregate's) go out as written.
fn grpc_status(body: &Body) -> Option<(Code, HeaderValue)> {
    match body {
        Body::Error(e) => Some((Code::of_http(e.status), grpc::message(e.message))),
        Body::Grpc(code, message) => Some((*code, message.clone())),
        Body::Fixed(_) | Body::Composed(_) => None,
    }
}

/// A trailers-only gRPC response: HTTP 200, the status in its only header block.
async fn send_grpc(
    session: &mut Session,
    chain: Option<&Chain>,
    cx: &mut Context,
    headers: Vec<(HeaderName, HeaderValue)>,
    code: Code,
    message: HeaderValue,
) -> Result<()> {
    cx.grpc_status = Some(code);
    let mut resp = ResponseHeader::build_no_case(200, None)?;
    let h2 = session.is_http2();
    crate::headers::edit_response(&mut resp, headers.len() + 4, |h| {
        for (name, value) in headers {
            h.try_append(name, value)?;
        }
        h.try_insert(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE_GRPC)?;
        h.try_insert(GRPC_STATUS, code.value())?;
        h.try_insert(GRPC_MESSAGE, message)?;
        if !h2 {
            // HTTP/1.1 frames the empty body by its length.
            h.try_insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
        }
        Ok(())
    })?;
    finish(session.req_header(), &mut resp, chain, cx)?;
    // The header block ends the stream: Pingora's `write_response_header` would leave it open
    // for an empty DATA frame, which gRPC clients take for a call cut short.
    let header = HttpTask::Header(Box::new(resp), true);
    session
        .as_downstream_mut()
        .response_duplex_vec(vec![header])
        .await
        .map(|_| ())
}
