//! What a filter that answers a request itself, in place of proxying it, may ask of the
//! gateway: the request's body and calls to the route's upstream (`Filter::serve`).
//!
//! The proxy implements [`Exchange`] over the client's session and the route's upstream, so a
//! call a filter makes has what a proxied request has: the pool's selection, health, breakers,
//! in-flight cap, retry rules and the request's deadline, and its target in the access log.

use super::{Context, Reply};
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

/// A target's whole answer to a call the gateway made.
#[derive(Debug)]
pub struct Answer {
    pub header: ResponseHeader,
    pub body: Bytes,
    /// HTTP/2 trailers (a gRPC call's status), if any came.
    pub trailers: Option<HeaderMap>,
}

/// The gateway's side of a request a filter answers itself.
#[async_trait]
pub trait Exchange: Send {
    /// The request body, whole: a longer one than `max` bytes is refused (`413`), one that
    /// stalls past `body_timeout` too (`408`).
    async fn body(&mut self, max: usize) -> Result<Bytes, Reply>;

    /// A gRPC call, `req` with `body`, to the route's upstream: with what every proxied request
    /// gets upstream (request id, trace context, consumer, the route's upstream-request
    /// filters) and the time the request has left as `grpc-timeout`; judged by its
    /// `grpc-status`, and sent again only where any call may be. The whole answer, its body up
    /// to `max` bytes; `Err` is the gateway's answer (`502`, `503`, `504`).
    async fn grpc_call(
        &mut self,
        req: RequestHeader,
        body: Bytes,
        max: usize,
        cx: &mut Context,
    ) -> Result<Answer, Reply>;
}
