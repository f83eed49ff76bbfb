//! The Pingora `ProxyHttp` implementation. It only dispatches: each hook hands off to the
//! router, the route's filter chain, the upstream's attempts, the request plumbing or the one
//! writer of the gateway's own responses ([`crate::reply`]).

use crate::conform;
use crate::deadline::{self, Deadline};
use crate::error::{self, GatewayError};
use crate::filter::{Phases, Reply};
use crate::grpc::{self, Code, GRPC_TIMEOUT};
use crate::held_body::HeldBody;
use crate::ids::{RequestId, TraceContext};
use crate::keepalive;
use crate::metrics::{self, RouteMetrics};
use crate::plumbing;
use crate::reply;
use crate::request_ctx::RequestCtx;
use crate::router::{Action, Lookup};
use crate::runtime::SharedSnapshot;
use crate::serve::Serving;
use crate::telemetry::Telemetry;
use crate::upgrade::Lifecycle;
use crate::upstream::{Outcome, Replay};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::ErrorType::HTTPStatus;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::{Arc, LazyLock};

/// Series for requests that matched no route.
static UNROUTED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new(metrics::NO_ROUTE, 0));

pub struct Gateway {
    snapshot: SharedSnapshot,
    telemetry: Telemetry,
    draining: Lifecycle,
}

impl Gateway {
    pub fn new(snapshot: SharedSnapshot, telemetry: Telemetry, draining: Lifecycle) -> Self {
        Gateway {
            snapshot,
            telemetry,
            draining,
        }
    }
}

fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session.client_addr()?.as_inet().map(|a| a.ip())
}

/// What makes the request safe to send again: its method, and its body still whole in
/// Pingora's retry buffer.
fn replay(session: &Session) -> Replay {
    Replay {
        idempotent: session.req_header().method.is_idempotent(),
        body_whole: !session.as_ref().retry_buffer_truncated(),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inside its request future, which it moves into a
    /// new box on every request; a pointer there instead of the context's 500 bytes is that
    /// much less to copy.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::default()
    }

    /// No downstream modules: Pingora's default adds a (disabled) compression module that
    /// still runs on every response.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Answers the gateway writes itself (errors, `respond`, aggregates) are awaited boxed:
    /// inline, their futures (an aggregate's is kilobytes) would size this hook's future, which
    /// is allocated and moved on every request.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<bool> {
        keepalive::header_read();
        if self.draining.is_draining() {
            // Handing over to a new process: move this client to a fresh connection.
            session.set_keepalive(None);
        }
        let cx = &mut ctx.cx;
        let headers = &session.req_header().headers;
        cx.request_id = RequestId::of(headers);
        cx.trace = TraceContext::of(headers, self.telemetry.sample_ratio());
        cx.grpc = grpc::is_grpc(headers);
        cx.peer = peer_ip(session);
        cx.tls = session.digest().and_then(|d| d.ssl_digest.clone());
        let snapshot = self.snapshot.load_full();
        cx.trusted_proxies = Arc::clone(&snapshot.trusted_proxies);
        if let Err(e) = conform::check(session.req_header_mut(), keepalive::head_checked()) {
            ctx.snapshot = Some(snapshot);
            // Nothing more is read of a request that could not be placed.
            session.set_keepalive(None);
            Box::pin(ctx.send(session, Reply::error(e))).await?;
            return Ok(true);
        }
        let (lookup, matched) = snapshot.router.route(session.req_header());
        let route = match lookup {
            Lookup::Found { route, .. } => Arc::clone(route),
            Lookup::MethodNotAllowed { allow } => {
                let reply =
                    Reply::error(error::METHOD_NOT_ALLOWED).with(http::header::ALLOW, allow);
                ctx.snapshot = Some(snapshot);
                Box::pin(ctx.send(session, reply)).await?;
                return Ok(true);
            }
            Lookup::NotFound => {
                ctx.snapshot = Some(snapshot);
                Box::pin(ctx.send(session, Reply::error(error::ROUTE_NOT_FOUND))).await?;
                return Ok(true);
            }
        };
        let body_timeout = snapshot.checked.config.server.body_timeout.0;
        ctx.snapshot = Some(snapshot);
        ctx.route_inflight = Some(route.metrics.enter());
        ctx.cx.route = Some(Arc::clone(&route.name));
        // A tunnel lives as long as it is used: no deadline for an upgrade request.
        ctx.upgrade = session.is_upgrade_req();
        if !ctx.upgrade {
            let headers = &session.req_header().headers;
            let grpc_timeout = ctx.cx.grpc.then(|| headers.get(GRPC_TIMEOUT)).flatten();
            ctx.deadline = Deadline::of(ctx.started, route.timeout, grpc_timeout);
        }
        ctx.route = Some(route);
        if let Some(route) = ctx.route_with(Phases::REQUEST) {
            if let Err(reply) = route.chain.request(session.req_header(), &mut ctx.cx).await {
                Box::pin(ctx.send(session, reply)).await?;
                return Ok(true);
            }
        }
        ctx.choose_upstream(session.req_header());
        let RequestCtx {
            cx,
            route: Some(route),
            upstream,
            matched: routed,
            held,
            attempts,
            deadline,
            ..
        } = &mut **ctx
        else {
            return Ok(false);
        };
        let served = match upstream {
            // A filter may answer the request itself, calling the upstream as it needs.
            Some(upstream) if route.chain.has(Phases::SERVE) => {
                let client = session.req_header().clone();
                let mut serving = Serving {
                    session: session.as_mut(),
                    client: &client,
                    route,
                    upstream,
                    attempts,
                    deadline: *deadline,
                    body_timeout,
                };
                Box::pin(route.chain.serve(&client, &mut serving, cx)).await
            }
            _ => None,
        };
        let reply = match (served, &route.action) {
            (Some(reply), _) => reply,
            (None, Action::Upstream(_) | Action::Split(_)) if !HeldBody::wanted(&route.chain) => {
                *routed = matched;
                return Ok(false);
            }
            (None, Action::Upstream(_) | Action::Split(_)) => {
                *routed = matched;
                let read = HeldBody::read(session.as_mut(), &route.chain, body_timeout, cx);
                match Box::pin(read).await {
                    Ok(body) => {
                        *held = body;
                        return Ok(false);
                    }
                    Err(reply) => reply,
                }
            }
            (None, Action::Respond(r)) => r.reply(),
            (None, Action::Aggregate(agg)) => {
                let path = matched.normalized.as_deref();
                let path = path.unwrap_or(session.req_header().uri.path());
                Box::pin(agg.run(session.req_header(), &route.chain, cx, path)).await
            }
        };
        Box::pin(ctx.send(session, reply)).await?;
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        // The bytes of an upgraded tunnel (a WebSocket) are no request body: no body limit or
        // filter applies to them.
        if session.was_upgraded() {
            return Ok(());
        }
        let Some(route) = ctx.route_with(Phases::REQUEST_BODY) else {
            ctx.mirror_body(body, end_of_stream);
            return Ok(());
        };
        let RequestCtx { cx, held, .. } = &mut **ctx;
        let judged = match held {
            Some(held) => held.body(body, end_of_stream, &route.chain, cx).await,
            None => route.chain.request_body(body, end_of_stream, cx).await,
        };
        match judged {
            Ok(()) => {
                ctx.mirror_body(body, end_of_stream);
                Ok(())
            }
            // Written by `fail_to_proxy`, through the one writer.
            Err(reply) => {
                let status = reply.status;
                ctx.cx.pending = Some(reply);
                ctx.body_refused = true;
                Error::e_explain(HTTPStatus(status), "refused by a request body filter")
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Box<HttpPeer>> {
        let RequestCtx {
            cx,
            route,
            upstream,
            attempts,
            deadline,
            upgrade,
            ..
        } = &mut **ctx;
        let Some(upstream) = upstream.as_deref() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream route in context");
        };
        let Ok(left) = deadline::before_attempt(*deadline, attempts.backoff(upstream)).await else {
            cx.pending = Some(Reply::error(error::UPSTREAM_TIMEOUT));
            return Error::e_explain(HTTPStatus(504), "the request's deadline passed");
        };
        crate::request_ctx::prepare_retry(route.as_deref(), attempts, cx).await?;
        let req = session.req_header();
        let key = match &upstream.hash_on {
            Some(h) => h.key(req, cx.peek_client_ip(&req.headers)),
            None => std::borrow::Cow::Borrowed(&b""[..]),
        };
        match attempts.pick(upstream, &key) {
            Ok(mut peer) => {
                deadline::bound(&mut peer, left);
                if *upgrade {
                    upstream.for_tunnel(&mut peer);
                }
                Ok(peer)
            }
            Err(why) => {
                // Answered at once, through the one writer (`fail_to_proxy`).
                cx.pending = route.as_deref().map(|r| r.unavailable(cx.grpc));
                Error::e_explain(HTTPStatus(503), format!("{why:?}"))
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<RequestCtx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let timeout = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
        );
        let RequestCtx {
            cx,
            route,
            upstream,
            attempts,
            deadline,
            ..
        } = &mut **ctx;
        // A connect the request's deadline cut short says nothing of the target.
        let outcome = match deadline.is_some_and(|d| d.passed()) {
            true => Outcome::Abandoned,
            false => Outcome::Connect { timeout },
        };
        if let Some(route) = route.as_deref() {
            if let Some(upstream) = upstream.as_deref() {
                attempts.report(upstream, outcome);
                if outcome == Outcome::Abandoned {
                    cx.pending = Some(Reply::error(error::UPSTREAM_TIMEOUT));
                } else if attempts.may_retry(upstream, outcome, || Replay::ALWAYS) {
                    e.set_retry(true);
                } else {
                    cx.pending = route.fallback(cx.grpc);
                }
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<RequestCtx>,
        client_reused: bool,
    ) -> Box<Error> {
        let RequestCtx {
            upstream,
            attempts,
            deadline,
            ..
        } = &mut **ctx;
        let upstream = upstream.as_deref();
        // A pooled connection the target had closed while idle: the keep-alive race, not a
        // failure of the target; nor is an answer the request's deadline did not wait for.
        let stale = client_reused && matches!(e.retry, pingora::RetryType::ReusedOnly);
        let cut = deadline.is_some_and(|d| d.passed());
        if let (Some(upstream), ErrorSource::Upstream) = (upstream, e.esource()) {
            let outcome = match e.etype() {
                _ if stale || cut => Outcome::Abandoned,
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::Timeout,
                _ => Outcome::Broken,
            };
            attempts.report(upstream, outcome);
        }
        // Pingora's own rule: only a replayable request, and errors on a reused connection
        // only where it allows. A retry `upstream_response_filter` decided (an answer no client
        // saw, a gRPC call's body whole) stands.
        let decided = matches!(e.etype(), ErrorType::HTTPStatus(_)) && e.retry();
        let mut e = e.more_context(format!("Peer: {peer}"));
        let r = replay(session);
        match (decided, r.idempotent && r.body_whole) {
            (true, _) => {}
            (false, true) => {
                e.retry.decide_reuse(client_reused);
                if let (Some(upstream), true) = (upstream, stale && e.retry()) {
                    crate::upstream::attempt::count_retry(upstream, "stale_connection");
                }
            }
            (false, false) => e.set_retry(false),
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_deref() else {
            return Ok(());
        };
        route.rewrite_uri(upstream_request, &ctx.matched)?;
        conform::canonical_length(upstream_request);
        let target = ctx.attempts.target().filter(|_| !route.preserve_host);
        plumbing::prepare_upstream(
            upstream_request,
            session.req_header(),
            &ctx.cx,
            target.map(|t| &t.host_header),
        )?;
        if let (true, Some(left)) = (ctx.cx.grpc, ctx.deadline.and_then(|d| d.left())) {
            // The target learns the time the call has left, as gRPC clients tell it.
            upstream_request.insert_header(GRPC_TIMEOUT, grpc::timeout_value(left))?;
        }
        if let Some(route) = ctx.route_with(Phases::UPSTREAM_REQUEST) {
            route
                .chain
                .upstream_request(upstream_request, &mut ctx.cx)?;
        }
        if let Some(held) = ctx.held.as_mut() {
            held.upstream(upstream_request)?;
        }
        ctx.mirror_begin(upstream_request, || {
            session.as_downstream_mut().is_body_empty()
        });
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        let RequestCtx {
            cx,
            upstream,
            attempts,
            ..
        } = &mut **ctx;
        let Some(upstream) = upstream.as_deref() else {
            return Ok(());
        };
        if reply::interim(upstream_response) {
            return Ok(());
        }
        let status = upstream_response.status.as_u16();
        if cx.grpc {
            // In the headers of a trailers-only answer; else it comes in the trailers.
            cx.grpc_status = Code::of_headers(&upstream_response.headers);
        }
        match Outcome::of_answer(status, cx.grpc, cx.grpc_status) {
            // Reported with the trailers (`upstream_response_trailer_filter`).
            None => attempts.answered(),
            Some(outcome) => {
                attempts.report(upstream, outcome);
                if attempts.may_retry(upstream, outcome, || replay(session)) {
                    // The client has seen nothing yet: Pingora turns the error into a retry
                    // and calls `upstream_peer` again.
                    let status = if status == 200 { 503 } else { status };
                    let mut e = Error::explain(HTTPStatus(status), "retryable upstream answer");
                    e.set_retry(true);
                    return Err(e);
                }
            }
        }
        ctx.upstream_response(upstream_response, replay(session).body_whole)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.deadline.is_some_and(|d| d.passed()) {
            // A response still streaming at the deadline is cut here.
            return Error::e_explain(ErrorType::ReadTimedout, "the request's deadline passed");
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        let RequestCtx {
            cx,
            upstream,
            attempts,
            ..
        } = &mut **ctx;
        if !cx.grpc {
            return Ok(());
        }
        // Trailers without a status end the call as gRPC clients take it: UNKNOWN.
        let code = Code::of_headers(trailers).unwrap_or(Code::UNKNOWN);
        cx.grpc_status = Some(code);
        if let Some(upstream) = upstream.as_deref() {
            attempts.report(upstream, Outcome::Grpc(code));
        }
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<Bytes>> {
        Ok(match ctx.route_with(Phases::RESPONSE_TRAILERS) {
            Some(route) => route.chain.response_trailers(trailers, &mut ctx.cx),
            None => None,
        })
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            keepalive::tunnel(session.as_downstream_mut());
            ctx.tunnel = ctx.route.as_ref().map(|r| r.metrics.tunnel());
        } else if !reply::interim(upstream_response) {
            keepalive::before_answer(session.as_downstream_mut());
        }
        if let Some(cookie) = ctx.split.as_mut().and_then(|p| p.set_cookie.take()) {
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        let req = session.downstream_session.req_header();
        ctx.cache_respond(&session.cache, req, upstream_response);
        let (chain, cx) = ctx.answering();
        reply::finish(session.req_header(), upstream_response, chain, cx)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Box<RequestCtx>) -> Result<()> {
        if let Some(cache) = ctx.cache() {
            cache.enable(
                &mut session.cache,
                session.downstream_session.req_header(),
                &ctx.cx,
            );
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Box<RequestCtx>) -> Result<CacheKey> {
        let cache = ctx
            .cache()
            .or_err(ErrorType::InternalError, "no cache on the route")?;
        Ok(cache.key(session.req_header(), &ctx.cx))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<RespCacheable> {
        let ctx = &mut **ctx;
        Ok(match ctx.route.as_deref().and_then(|r| r.chain.cache()) {
            Some(cache) => cache.cacheable(session.req_header(), resp, &mut ctx.cx),
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Box<RequestCtx>,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        ctx.cache()?.vary(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Box<RequestCtx>,
        error: Option<&Error>,
    ) -> bool {
        ctx.cache().is_some_and(|c| c.serve_stale(error))
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<std::time::Duration>> {
        let (chain, cx) = ctx.answering();
        reply::body(body, end_of_stream, chain, cx)?;
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Box<RequestCtx>) {
        // 499, as nginx logs it: the client went away before any response was written.
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let took = ctx.started.elapsed();
        let RequestCtx {
            upstream, attempts, ..
        } = &mut **ctx;
        if let Some(upstream) = upstream.as_deref() {
            // An attempt still open here ended without an outcome of its own: the client
            // left, or the gateway gave up on it.
            attempts.report(upstream, Outcome::Abandoned);
        }
        ctx.mirror_end(status);
        let method = &session.req_header().method;
        let metrics = ctx.route.as_deref().map_or(&*UNROUTED, |r| &*r.metrics);
        metrics.record(method, status, took);
        ctx.split_done(status, took);
        metrics.record_usage(&ctx.cx.identity, status);
        if ctx.cx.grpc {
            let code = Code::of_call(ctx.cx.grpc_status, status);
            ctx.cx.grpc_status = Some(code);
            metrics.record_grpc(code);
        }
        if let Some(route) = ctx.route.as_deref() {
            route.chain.log(&ctx.cx, status);
        }
        self.telemetry.record(session, ctx, status, took);
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<RequestCtx>,
    ) -> FailToProxy {
        let reply = match ctx.cx.pending.take() {
            Some(reply) => reply,
            None => match GatewayError::from_pingora(e) {
                Some(err) => Reply::error(err),
                None => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    }
                }
            },
        };
        let status = reply.status;
        // Once the response has started, the only honest signal left is closing the connection.
        // (A `100 Continue` is no start: the answer is still to come.)
        if session
            .response_written()
            .is_none_or(|r| r.status.is_informational())
        {
            if ctx.cx.request_id.is_empty() {
                ctx.cx.request_id = RequestId::of(&session.req_header().headers);
            }
            // The connection is closed after a proxy failure: say so, so that a client does not
            // send its next request on it.
            session.set_keepalive(None);
            if let Err(write) = ctx.send(session, reply).await {
                log::debug!("could not send the error response: {write}");
            }
        }
        if ctx.body_refused {
            keepalive::linger(session.as_mut()).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}
