//! The gateway's side of a request a filter answers itself ([`Filter::serve`]): the client's
//! body, read whole, and calls to the route's upstream made as a proxied request's attempts
//! are (selection, breakers, retry rules, the request's deadline), recorded in its `Attempts`
//! so the access log names the target.
//!
//! [`Filter::serve`]: crate::filter::Filter::serve

use crate::deadline::Deadline;
use crate::error;
use crate::filter::{Answer, Context, Exchange, Phases, Reply};
use crate::grpc;
use crate::held_body;
use crate::plumbing;
use crate::router::Route;
use crate::upstream::call::{self, Call, Failure};
use crate::upstream::{Attempts, Replay, Upstream};
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use std::time::Duration;

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

pub struct Serving<'a> {
    pub session: &'a mut ServerSession,
    /// The client's request, as it arrived.
    pub client: &'a RequestHeader,
    pub route: &'a Route,
    pub upstream: &'a Upstream,
    pub attempts: &'a mut Attempts,
    pub deadline: Option<Deadline>,
    pub body_timeout: Duration,
}

#[async_trait]
impl Exchange for Serving<'_> {
    async fn body(&mut self, max: usize) -> Result<Bytes, Reply> {
        held_body::whole(self.session, max, self.body_timeout).await
    }

    async fn grpc_call(
        &mut self,
        mut req: RequestHeader,
        body: Bytes,
        max: usize,
        cx: &mut Context,
    ) -> Result<Answer, Reply> {
        let internal = |_| Reply::error(error::INTERNAL);
        plumbing::prepare_upstream(&mut req, self.client, cx, None).map_err(internal)?;
        if let Some(left) = self.deadline.and_then(|d| d.left()) {
            // The target learns the time the call has left, as gRPC clients tell it.
            req.insert_header(GRPC_TIMEOUT, grpc::timeout_value(left))
                .map_err(internal)?;
        }
        if self.route.chain.has(Phases::UPSTREAM_REQUEST) {
            self.route
                .chain
                .upstream_request(&mut req, cx)
                .map_err(internal)?;
        }
        let call = Call {
            req: &req,
            body,
            max_body: max,
            // Retried only where any call may be: no target saw it, or one said UNAVAILABLE.
            replay: Replay {
                idempotent: false,
                body_whole: true,
            },
            grpc: true,
        };
        let deadline = self.deadline.map(|d| d.at());
        call::call(self.upstream, call, self.attempts, deadline)
            .await
            .map_err(|failure| {
                Reply::error(match failure {
                    Failure::Timeout => error::UPSTREAM_TIMEOUT,
                    Failure::Unavailable => error::UPSTREAM_UNAVAILABLE,
                    _ => error::BAD_GATEWAY,
                })
            })
    }
}
