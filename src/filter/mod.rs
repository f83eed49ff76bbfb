//! Filters: what policies do to a request, phase by phase.
//!
//! A [`Filter`] has one method per phase of a proxied request that a policy may need, each a
//! no-op by default, and says which phases it implements ([`Filter::phases`]). A route's
//! [`Chain`] is compiled at load into one list per phase, so a phase no filter of the route
//! implements costs nothing per request: not a call, not a dynamic dispatch.
//!
//! The phases, in the order a request meets them:
//! 1. [`Filter::request`]: the request header arrived and the route is known. A filter may
//!    answer the request itself (a 401, a 429), which ends the chain.
//! 2. [`Filter::request_body`]: each chunk of the request body on its way upstream.
//! 3. [`Filter::upstream_request`]: the header about to be sent to the target.
//! 4. [`Filter::upstream_response`]: the target's response header, before anything is sent.
//!    A filter may ask for another attempt here (an error with `retry` set, only when
//!    [`Context::body_replayable`]); [`Filter::retry`] then prepares it before phase 3 runs
//!    again.
//! 5. [`Filter::response`]: the response header about to be sent to the client, for proxied
//!    responses *and* for the gateway's own ([`crate::reply`]): errors, fixed answers.
//! 6. [`Filter::response_body`]: each chunk of the response body to the client.
//! 7. [`Filter::response_trailers`]: the target's trailers, which a filter may turn into the
//!    body's last bytes (gRPC-Web).
//! 8. [`Filter::log`]: the request is over.
//!
//! A filter may instead answer a request itself ([`Filter::serve`], after the request phase),
//! calling the route's upstream as it needs through [`Exchange`] (gRPC transcoding); then the
//! phases from the request body to the target's response do not run.

mod cache;
mod context;
mod serve;

pub use cache::{CacheResult, RouteCache};
pub use context::Context;
pub use serve::{Answer, Exchange};

use crate::error::GatewayError;
use crate::grpc::Code;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

bitflags::bitflags! {
    /// The phases a filter takes part in.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Phases: u16 {
        const REQUEST = 1;
        const REQUEST_BODY = 1 << 1;
        const UPSTREAM_REQUEST = 1 << 2;
        const UPSTREAM_RESPONSE = 1 << 3;
        const RESPONSE = 1 << 4;
        const RESPONSE_BODY = 1 << 5;
        const LOG = 1 << 6;
        const RESPONSE_TRAILERS = 1 << 7;
        const SERVE = 1 << 8;
        const RETRY = 1 << 9;
    }
}

/// A response the gateway writes itself instead of proxying.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Body,
    /// Headers besides the framing ones, which the writer sets.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
pub enum Body {
    /// The contract's JSON error, with the request id filled in when written.
    Error(GatewayError),
    Fixed(Bytes),
    /// A body the gateway put together in place of a target's (an aggregate's answer): the
    /// route's upstream-response filters see it as they would a target's response.
    Composed(Bytes),
    /// A gRPC status and its `grpc-message`, for a gRPC call: a gRPC route's `fallback`.
    Grpc(Code, HeaderValue),
}

impl Reply {
    pub fn error(error: GatewayError) -> Reply {
        Reply {
            status: error.status,
            body: Body::Error(error),
            headers: Vec::new(),
        }
    }

    /// The reply with one more header.
    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Add a chunk of a request body to what a filter keeps of it, up to `max` bytes: past that,
/// `413 payload_too_large`.
pub fn gather_body(
    kept: &mut bytes::BytesMut,
    chunk: &Option<Bytes>,
    max: usize,
) -> Result<(), Reply> {
    if let Some(chunk) = chunk {
        if kept.len() + chunk.len() > max {
            return Err(Reply::error(crate::error::PAYLOAD_TOO_LARGE));
        }
        kept.extend_from_slice(chunk);
    }
    Ok(())
}

/// Where a filter sits in its chain. Most run after authentication in the order their policies
/// are listed; a few must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Ahead of authentication: a CORS preflight carries no credentials and is answered
    /// before they are asked for.
    BeforeAuth,
    Listed,
    /// After every other filter: compression must see the body as the others left it.
    Last,
}

/// One policy's part in the phases of a request. Every method but [`Filter::phases`] has a
/// default that does nothing; a filter implements the phases it names there.
#[async_trait]
pub trait Filter: Send + Sync {
    /// The phases this filter implements; only those are called.
    fn phases(&self) -> Phases;

    /// Where the filter sits in its route's chain, wherever its policy is listed.
    fn stage(&self) -> Stage {
        Stage::Listed
    }

    /// The request header arrived. `Err` answers the request with that reply.
    async fn request(&self, _req: &RequestHeader, _cx: &mut Context) -> Result<(), Reply> {
        Ok(())
    }

    /// Answer the request in place of the route's upstream, through `exchange` (its body, calls
    /// to the upstream). `None`: not this filter's request; it goes on (to the next serving
    /// filter, then the upstream). Runs after the request phase.
    async fn serve(
        &self,
        _req: &RequestHeader,
        _exchange: &mut dyn Exchange,
        _cx: &mut Context,
    ) -> Option<Reply> {
        None
    }

    /// The filter's cache, if it is one (`cache`): the proxy's cache hooks go to the first
    /// filter of a route's chain that has one.
    fn cache(&self) -> Option<&dyn RouteCache> {
        None
    }

    /// How much of a request body this filter must see before any upstream is contacted: a
    /// body edit needs it all (up to its limit), a WAF the part it inspects. 0, the default:
    /// the body may stream. A route whose filters hold bodies reads them first
    /// (`crate::held_body`).
    fn holds_body(&self) -> usize {
        0
    }

    /// A chunk of the request body (`None` at the end of some bodies); `end` on the last.
    async fn request_body(
        &self,
        _body: &mut Option<Bytes>,
        _end: bool,
        _cx: &mut Context,
    ) -> Result<(), Reply> {
        Ok(())
    }

    /// The request header as it will be sent to the target.
    fn upstream_request(&self, _req: &mut RequestHeader, _cx: &mut Context) -> pingora::Result<()> {
        Ok(())
    }

    /// The target's response header.
    fn upstream_response(
        &self,
        _resp: &mut ResponseHeader,
        _cx: &mut Context,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// The request goes to a target again (an earlier attempt failed, or an upstream-response
    /// filter asked for another): prepare what the new attempt sends. `Err` answers the
    /// request instead.
    async fn retry(&self, _cx: &mut Context) -> Result<(), Reply> {
        Ok(())
    }

    /// The response header as it will be sent to the client, proxied or the gateway's own;
    /// `req` is the client's request (the answer may depend on its `Origin` or
    /// `Accept-Encoding`, even for a request that matched no route).
    fn response(
        &self,
        _req: &RequestHeader,
        _resp: &mut ResponseHeader,
        _cx: &mut Context,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// A chunk of the response body to the client; `end` on the last.
    fn response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end: bool,
        _cx: &mut Context,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// The request is over; `status` is what the client got (499: it went away first).
    /// The target's trailers, before they go to the client. `Some`: bytes written as the end
    /// of the body instead, and the trailers not sent (gRPC-Web's trailer frame).
    fn response_trailers(&self, _trailers: &HeaderMap, _cx: &mut Context) -> Option<Bytes> {
        None
    }

    fn log(&self, _cx: &Context, _status: u16) {}
}

type List = Box<[Arc<dyn Filter>]>;

/// A route's filters, one list per phase, in chain order.
#[derive(Default)]
pub struct Chain {
    request: List,
    request_body: List,
    upstream_request: List,
    upstream_response: List,
    retry: List,
    response: List,
    response_body: List,
    response_trailers: List,
    log: List,
    serve: List,
    /// The first filter with a cache.
    cache: Option<Arc<dyn Filter>>,
    /// The most of a request body any filter holds (`Filter::holds_body`).
    holds: usize,
}

impl Chain {
    pub fn new(filters: &[Arc<dyn Filter>]) -> Chain {
        let phase = |p: Phases| -> List {
            filters
                .iter()
                .filter(|f| f.phases().contains(p))
                .cloned()
                .collect()
        };
        Chain {
            request: phase(Phases::REQUEST),
            request_body: phase(Phases::REQUEST_BODY),
            upstream_request: phase(Phases::UPSTREAM_REQUEST),
            upstream_response: phase(Phases::UPSTREAM_RESPONSE),
            retry: phase(Phases::RETRY),
            response: phase(Phases::RESPONSE),
            response_body: phase(Phases::RESPONSE_BODY),
            response_trailers: phase(Phases::RESPONSE_TRAILERS),
            log: phase(Phases::LOG),
            serve: phase(Phases::SERVE),
            cache: filters.iter().find(|f| f.cache().is_some()).cloned(),
            holds: filters.iter().map(|f| f.holds_body()).max().unwrap_or(0),
        }
    }

    /// The route's cache, if its chain has one.
    pub fn cache(&self) -> Option<&dyn RouteCache> {
        self.cache.as_deref().and_then(|f| f.cache())
    }

    /// How much of a request body must be read before the upstream: 0 when it may stream.
    pub fn holds(&self) -> usize {
        self.holds
    }

    /// Whether some filter of the chain takes part in `phase`. Without a request- or
    /// response-body filter, the body streams through untouched and unbuffered.
    pub fn has(&self, phase: Phases) -> bool {
        let list = match phase {
            Phases::REQUEST => &self.request,
            Phases::REQUEST_BODY => &self.request_body,
            Phases::UPSTREAM_REQUEST => &self.upstream_request,
            Phases::UPSTREAM_RESPONSE => &self.upstream_response,
            Phases::RETRY => &self.retry,
            Phases::RESPONSE => &self.response,
            Phases::RESPONSE_BODY => &self.response_body,
            Phases::RESPONSE_TRAILERS => &self.response_trailers,
            Phases::LOG => &self.log,
            Phases::SERVE => &self.serve,
            _ => return false,
        };
        !list.is_empty()
    }

    pub async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        for f in self.request.iter() {
            f.request(req, cx).await?;
        }
        Ok(())
    }

    pub async fn request_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        for f in self.request_body.iter() {
            f.request_body(body, end, cx).await?;
        }
        Ok(())
    }

    pub fn upstream_request(
        &self,
        req: &mut RequestHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        self.upstream_request
            .iter()
            .try_for_each(|f| f.upstream_request(req, cx))
    }

    pub fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        self.upstream_response
            .iter()
            .try_for_each(|f| f.upstream_response(resp, cx))
    }

    pub async fn retry(&self, cx: &mut Context) -> Result<(), Reply> {
        for f in self.retry.iter() {
            f.retry(cx).await?;
        }
        Ok(())
    }

    pub fn response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        self.response
            .iter()
            .try_for_each(|f| f.response(req, resp, cx))
    }

    pub fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        self.response_body
            .iter()
            .try_for_each(|f| f.response_body(body, end, cx))
    }

    /// The first filter's bytes to end the body with in place of `trailers`, if one has them.
    pub fn response_trailers(&self, trailers: &HeaderMap, cx: &mut Context) -> Option<Bytes> {
        self.response_trailers
            .iter()
            .find_map(|f| f.response_trailers(trailers, cx))
    }

    pub fn log(&self, cx: &Context, status: u16) {
        self.log.iter().for_each(|f| f.log(cx, status));
    }

    /// The first serving filter's answer, if one takes the request.
    pub async fn serve(
        &self,
        req: &RequestHeader,
        exchange: &mut dyn Exchange,
        cx: &mut Context,
    ) -> Option<Reply> {
        for f in self.serve.iter() {
            if let Some(reply) = f.serve(req, exchange, cx).await {
                return Some(reply);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the calls of the phases it names.
    struct Probe {
        phases: Phases,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Filter for Probe {
        fn phases(&self) -> Phases {
            self.phases
        }
        async fn request(&self, _req: &RequestHeader, _cx: &mut Context) -> Result<(), Reply> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        async fn request_body(
            &self,
            body: &mut Option<Bytes>,
            _end: bool,
            _cx: &mut Context,
        ) -> Result<(), Reply> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            *body = Some(Bytes::from_static(b"changed"));
            Ok(())
        }
        fn response(
            &self,
            _req: &RequestHeader,
            resp: &mut ResponseHeader,
            _cx: &mut Context,
        ) -> pingora::Result<()> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            resp.insert_header("x-probe", "1")
        }
    }

    fn probe(phases: Phases) -> Arc<Probe> {
        Arc::new(Probe {
            phases,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn a_route_without_body_filters_leaves_the_body_alone() {
        let header_only = probe(Phases::REQUEST | Phases::RESPONSE);
        let chain = Chain::new(&[header_only.clone() as Arc<dyn Filter>]);
        assert!(
            !chain.has(Phases::REQUEST_BODY),
            "nothing asks for the body"
        );
        assert!(!chain.has(Phases::RESPONSE_BODY));
        let original = Bytes::from(vec![7u8; 4096]);
        let mut body = Some(original.clone());
        let mut cx = Context::default();
        chain.request_body(&mut body, true, &mut cx).await.unwrap();
        chain.response_body(&mut body, true, &mut cx).unwrap();
        let after = body.as_ref().unwrap();
        // The very same buffer: not copied, not buffered, not looked at.
        assert_eq!(after.as_ptr(), original.as_ptr());
        assert_eq!(after.len(), original.len());
        assert_eq!(header_only.calls.load(Ordering::Relaxed), 0);

        let body_filter = probe(Phases::REQUEST_BODY);
        let chain = Chain::new(&[header_only.clone() as Arc<dyn Filter>, body_filter.clone()]);
        assert!(chain.has(Phases::REQUEST_BODY));
        chain.request_body(&mut body, true, &mut cx).await.unwrap();
        assert_eq!(body.as_deref(), Some(&b"changed"[..]));
        assert_eq!(body_filter.calls.load(Ordering::Relaxed), 1);
        assert_eq!(header_only.calls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn phases_run_only_their_filters_in_order() {
        let a = probe(Phases::REQUEST);
        let b = probe(Phases::RESPONSE);
        let chain = Chain::new(&[a.clone() as Arc<dyn Filter>, b.clone()]);
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut cx = Context::default();
        chain.request(&req, &mut cx).await.unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        chain.response(&req, &mut resp, &mut cx).unwrap();
        assert_eq!(a.calls.load(Ordering::Relaxed), 1);
        assert_eq!(b.calls.load(Ordering::Relaxed), 1);
        assert_eq!(resp.headers.get("x-probe").unwrap(), "1");
    }

    /// Turns the trailers into bytes saying how many there were.
    struct Framer(&'static str);

    #[async_trait]
    impl Filter for Framer {
        fn phases(&self) -> Phases {
            Phases::RESPONSE_TRAILERS
        }

        fn response_trailers(&self, trailers: &HeaderMap, _cx: &mut Context) -> Option<Bytes> {
            Some(Bytes::from(format!("{} {}", self.0, trailers.len())))
        }
    }

    #[test]
    fn the_first_filter_with_bytes_for_the_trailers_has_them() {
        let mut cx = Context::default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(Chain::new(&[]).response_trailers(&trailers, &mut cx), None);
        let plain = probe(Phases::RESPONSE);
        let chain = Chain::new(&[
            plain as Arc<dyn Filter>,
            Arc::new(Framer("first")),
            Arc::new(Framer("second")),
        ]);
        assert!(chain.has(Phases::RESPONSE_TRAILERS));
        let bytes = chain.response_trailers(&trailers, &mut cx);
        assert_eq!(bytes.as_deref(), Some(&b"first 1"[..]));
    }
}
