//! A request body read, judged and edited before any upstream is contacted.
//!
//! Pingora sends the request header upstream before it reads the body, so a filter that needs
//! the whole body (a body edit) or a part of it (a WAF inspecting bodies) would otherwise see it
//! only once the target has the head: a refusal leaves the target a half request, and an edited
//! body must go out chunked, which upstreams that read by `Content-Length` take as empty. A route
//! whose chain holds bodies ([`Chain::holds`]) reads the body here, in `request_filter`, through
//! its body filters, up to what they need: a refusal is answered before any upstream is picked,
//! and a body read to its end goes upstream with an exact `content-length`. Routes without such
//! filters keep streaming.
//!
//! Pingora 0.9 has no way to hand it a body read early (cloudflare/pingora#575; the open pull
//! request #816 adds one): the only body it sends that it did not read itself is its retry
//! buffer (64 KiB), and only when that holds something. So the buffer is turned on when what is
//! left of a `content-length` body fits it: Pingora then calls the body filter once, and
//! [`HeldBody::body`] puts the whole held body in place of what the buffer replays. A body
//! without a length (chunked, or HTTP/2 without `content-length`) fits only if it ends within
//! 64 KiB; a longer one on such a route is answered `411 length_required`, before the upstream.
//! A body longer than the filters need (a WAF's `max_body`) is read up to there, judged, and
//! streams on: the held part goes first.

use crate::error::{self, GatewayError};
use crate::filter::{Chain, Context, Reply};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use std::time::Duration;

/// Pingora's retry buffer: bodies (or their rest) within it are replayed to the upstream.
const RETRY_BUFFER: u64 = 64 * 1024;

/// What was read of a request body before the upstream.
pub struct HeldBody {
    /// The body as the filters left it.
    body: Bytes,
    /// Read to its end: goes upstream with this length, nothing follows.
    whole: bool,
    /// The held part has gone out on the current attempt.
    sent: bool,
}

impl HeldBody {
    /// Whether a route's chain has filters that hold bodies (most have none, and pay this one
    /// check).
    pub fn wanted(chain: &Chain) -> bool {
        chain.holds() > 0
    }

    /// Read the body through the route's body filters (`chain`), until its end or past what
    /// they need, waiting at most `pause` (`body_timeout`) between two reads. `None` when the
    /// request has no body. `Err` answers the request.
    pub async fn read(
        session: &mut ServerSession,
        chain: &Chain,
        pause: Duration,
        cx: &mut Context,
    ) -> Result<Option<HeldBody>, Reply> {
        if session.is_body_empty() || session.is_body_done() {
            return Ok(None);
        }
        let req = session.req_header();
        let length = declared(req);
        if req.version == http::Version::HTTP_11 && expects_continue(req) {
            // The client waits for this before it sends the body.
            if let Err(e) = session.write_continue_response().await {
                session.set_keepalive(None);
                return Err(read_error(&e));
            }
        }
        let need = chain.holds() as u64;
        // A body with a length is read whole when it ends within what Pingora can replay past
        // what the filters need; a longer one only up to that need.
        let whole_length = length.filter(|n| *n <= need + RETRY_BUFFER);
        let mut buffering = false;
        let mut read = 0u64;
        let mut held = BytesMut::new();
        let whole = loop {
            if !buffering {
                // Each read takes at most 64 KiB: the buffer is on before the last one.
                buffering = match (length, whole_length) {
                    (None, _) => true,
                    (Some(_), Some(n)) => n - read.min(n) <= RETRY_BUFFER,
                    (Some(_), None) => false,
                };
                if buffering {
                    session.enable_retry_buffering();
                }
            }
            // HTTP/1 reads carry the session's own deadline; HTTP/2's have none in Pingora.
            let next = tokio::time::timeout(pause, session.read_request_body()).await;
            let mut chunk = match next {
                Ok(Ok(chunk)) => chunk,
                failed => {
                    // Where the next request would start on this connection is unknown now.
                    session.set_keepalive(None);
                    return Err(match failed {
                        Ok(Err(e)) => read_error(&e),
                        _ => Reply::error(error::REQUEST_TIMEOUT),
                    });
                }
            };
            read += chunk.as_ref().map_or(0, |c| c.len() as u64);
            let end = chunk.is_none() || session.is_body_done();
            chain.request_body(&mut chunk, end, cx).await?;
            if let Some(c) = chunk {
                held.extend_from_slice(&c);
            }
            if end {
                break true;
            }
            // Stopped early, Pingora must find nothing to replay: no buffer, or a full one.
            let enough = match length {
                Some(_) => whole_length.is_none() && read > need,
                None => read > need && session.retry_buffer_truncated(),
            };
            if enough {
                break false;
            }
        };
        if whole && (!buffering || session.retry_buffer_truncated()) {
            // Pingora would have nothing to send (see the module's note).
            return Err(Reply::error(error::LENGTH_REQUIRED));
        }
        Ok(Some(HeldBody {
            body: held.freeze(),
            whole,
            sent: false,
        }))
    }

    /// A new attempt: its request header gets the held body's exact length, and no
    /// `Expect: 100-continue` (the body is here; the client had its `100`).
    pub fn upstream(&mut self, req: &mut RequestHeader) -> pingora::Result<()> {
        self.sent = false;
        req.remove_header(&EXPECT);
        if self.whole {
            req.remove_header(&TRANSFER_ENCODING);
            req.insert_header(CONTENT_LENGTH, self.body.len())?;
        }
        Ok(())
    }

    /// A chunk on its way upstream. Whether the held body has gone out on this attempt yet
    /// decides: a whole body takes the place of what Pingora replays; otherwise the held part
    /// goes first and what follows runs through `chain` as any body does.
    pub async fn body(
        &mut self,
        chunk: &mut Option<Bytes>,
        end: bool,
        chain: &Chain,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        if self.whole {
            *chunk = match self.sent {
                false => Some(self.body.clone()),
                true => None,
            };
            self.sent = true;
            return Ok(());
        }
        chain.request_body(chunk, end, cx).await?;
        if !self.sent {
            self.sent = true;
            let rest = chunk.as_deref().unwrap_or_default();
            let mut both = BytesMut::with_capacity(self.body.len() + rest.len());
            both.extend_from_slice(&self.body);
            both.extend_from_slice(rest);
            *chunk = Some(both.freeze());
        }
        Ok(())
    }
}

/// The whole body, for a filter that answers the request itself (`Filter::serve`): refused
/// past `max` bytes (`413`), or when the client stalls past `pause` between two reads (`408`).
pub async fn whole(
    session: &mut ServerSession,
    max: usize,
    pause: Duration,
) -> Result<Bytes, Reply> {
    if session.is_body_empty() || session.is_body_done() {
        return Ok(Bytes::new());
    }
    let req = session.req_header();
    // A refused body is read and dropped after the answer (the session lingers), so that a
    // client still sending reads the 413 instead of a reset.
    if declared(req).is_some_and(|n| n > max as u64) {
        return Err(Reply::error(error::PAYLOAD_TOO_LARGE));
    }
    if req.version == http::Version::HTTP_11 && expects_continue(req) {
        if let Err(e) = session.write_continue_response().await {
            session.set_keepalive(None);
            return Err(read_error(&e));
        }
    }
    let mut body = BytesMut::new();
    loop {
        match tokio::time::timeout(pause, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > max {
                    return Err(Reply::error(error::PAYLOAD_TOO_LARGE));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => return Ok(body.freeze()),
            failed => {
                session.set_keepalive(None);
                return Err(match failed {
                    Ok(Err(e)) => read_error(&e),
                    _ => Reply::error(error::REQUEST_TIMEOUT),
                });
            }
        }
    }
}

/// The declared body length, if any.
fn declared(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A body that could not be read: the client stalled past `body_timeout`, closed, or sent
/// broken framing.
fn read_error(e: &pingora::Error) -> Reply {
    let error: GatewayError = match e.etype() {
        pingora::ErrorType::ReadTimedout => error::REQUEST_TIMEOUT,
        _ => error::BAD_REQUEST,
    };
    Reply::error(error)
}
