//! The Pingora `ProxyHttp` implementation. It stays thin: each hook hands off to the router,
//! the route's upstream pool, the request plumbing or the error writer.

use crate::access_log::{AccessLog, Entry};
use crate::error::{self, GatewayError};
use crate::metrics::{self, InflightRoute, RouteMetrics, METRICS};
use crate::otlp::{Exporter, Finished};
use crate::plumbing::{self, RequestId, TraceContext};
use crate::policy::api_key::strip_query_param;
use crate::policy::limit_key::Facts;
use crate::policy::Verdict;
use crate::policy::{Counter, Found};
use crate::router::{normalize_path, Action, Lookup, Responder, Route};
use crate::runtime::{SharedSnapshot, Snapshot};
use crate::upgrade::Lifecycle;
use crate::upstream::{HashOn, InflightGuard, Upstream};
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::ErrorType::HTTPStatus;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Series for requests that matched no route.
static UNROUTED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new(metrics::NO_ROUTE));

pub struct Gateway {
    snapshot: SharedSnapshot,
    access_log: Option<AccessLog>,
    tracer: Option<Arc<Exporter>>,
    draining: Lifecycle,
}

impl Gateway {
    pub fn new(
        snapshot: SharedSnapshot,
        access_log: Option<AccessLog>,
        tracer: Option<Arc<Exporter>>,
        draining: Lifecycle,
    ) -> Self {
        Gateway {
            snapshot,
            access_log,
            tracer,
            draining,
        }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    started: Option<Instant>,
    /// When the current attempt picked its target.
    upstream_started: Option<Instant>,
    /// Target picked to response header, for the access log.
    upstream_took: Option<Duration>,
    /// What the route's policies established: the consumer, the credential to strip.
    verdict: Verdict,
    /// The client's address after `trusted_proxies`, once something needed it.
    client_ip: Option<IpAddr>,
    /// Policy outcomes for the access log.
    decisions: Vec<&'static str>,
    /// Counts the request in `pylon_inflight_requests{route}` until dropped.
    route_inflight: Option<InflightRoute>,
    request_id: RequestId,
    trace: TraceContext,
    snapshot: Option<Arc<Snapshot>>,
    route: Option<Arc<Route>>,
    /// The routed path when normalization changed it; it is also what goes upstream.
    normalized_path: Option<String>,
    /// Bytes of the (normalized) path the route's pattern covered, for `strip_prefix`.
    matched_len: usize,
    /// Attempts made to reach a target, retries included.
    attempts: usize,
    /// Targets already tried, so a retry goes elsewhere (no allocation for the first).
    first_tried: Option<SocketAddr>,
    more_tried: Vec<SocketAddr>,
    inflight: Option<InflightGuard>,
}

impl RequestCtx {
    fn tried(&self, addr: &SocketAddr) -> bool {
        self.first_tried.as_ref() == Some(addr) || self.more_tried.contains(addr)
    }

    fn record_try(&mut self, addr: SocketAddr) {
        if self.first_tried.is_none() {
            self.first_tried = Some(addr);
        } else {
            self.more_tried.push(addr);
        }
    }

    fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.route.as_deref()?.action {
            Action::Upstream(u) => Some(u),
            Action::Respond(_) => None,
        }
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr()?.as_inet().map(|a| a.ip())
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The key a `consistent_hash` pool hashes for this request.
fn hash_key<'a>(hash_on: &HashOn, session: &'a Session, snapshot: &Snapshot) -> Cow<'a, [u8]> {
    let req = session.req_header();
    match hash_on {
        HashOn::ClientIp => match peer_ip(session) {
            Some(peer) => {
                let ip = plumbing::client_ip(peer, &req.headers, &snapshot.trusted_proxies);
                Cow::Owned(match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                })
            }
            None => Cow::Borrowed(b""),
        },
        HashOn::Path => Cow::Borrowed(req.uri.path().as_bytes()),
        HashOn::Header(name) => {
            Cow::Borrowed(req.headers.get(name).map_or(&b""[..], |v| v.as_bytes()))
        }
        HashOn::Cookie(name) => Cow::Borrowed(
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii_start();
                    let rest = pair.strip_prefix(name.as_bytes())?;
                    rest.strip_prefix(b"=")
                })
                .unwrap_or(b""),
        ),
    }
}

async fn respond(
    session: &mut Session,
    r: &Responder,
    request_id: &RequestId,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(r.status, Some(r.headers.len() + extra.len() + 2))?;
    for (name, value) in r.headers.iter().chain(extra) {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, r.body.len())?;
    resp.insert_header(plumbing::titled::X_REQUEST_ID, request_id.header())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(r.body.clone()), true)
        .await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Some(Instant::now()),
            ..RequestCtx::default()
        }
    }

    /// No downstream modules: Pingora's default adds a (disabled) compression module that
    /// still runs on every response.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.draining.is_draining() {
            // Handing over to a new process: move this client to a fresh connection.
            session.set_keepalive(None);
        }
        ctx.request_id = RequestId::of(&session.req_header().headers);
        let sample_ratio = self.tracer.as_ref().map_or(1.0, |t| t.sample_ratio);
        ctx.trace = TraceContext::of(&session.req_header().headers, sample_ratio);
        let snapshot = self.snapshot.load_full();
        let req = session.req_header();
        let normalized = match normalize_path(req.uri.path()) {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        };
        let path = normalized.as_deref().unwrap_or(req.uri.path());
        let lookup = snapshot
            .router
            .find(request_host(req), path, &req.method, &req.headers);
        let (route, matched_len) = match lookup {
            Lookup::Found { route, matched_len } => {
                ctx.route_inflight = Some(route.metrics.enter());
                (Arc::clone(route), matched_len)
            }
            Lookup::MethodNotAllowed => {
                error::METHOD_NOT_ALLOWED
                    .send(session, &ctx.request_id)
                    .await?;
                return Ok(true);
            }
            Lookup::NotFound => {
                error::ROUTE_NOT_FOUND
                    .send(session, &ctx.request_id)
                    .await?;
                return Ok(true);
            }
        };
        ctx.route = Some(Arc::clone(&route));
        if !route.policies.is_empty() {
            let req = session.req_header();
            let client_ip = peer_ip(session)
                .map(|peer| plumbing::client_ip(peer, &req.headers, &snapshot.trusted_proxies));
            ctx.client_ip = client_ip;
            let facts = Facts {
                client_ip: client_ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
                route: &route.name,
            };
            match route.policies.run(req, &facts).await {
                Ok(verdict) => {
                    if verdict.throttled {
                        ctx.decisions.push("throttled");
                    }
                    ctx.verdict = verdict;
                }
                Err(rejection) => {
                    let labels = [&*route.name, &*rejection.policy, rejection.reason];
                    match rejection.counter {
                        Counter::Auth => {
                            METRICS.auth_failures.with_label_values(&labels).inc();
                            ctx.decisions.push("auth_failed");
                        }
                        Counter::RateLimited => {
                            METRICS.rate_limited.with_label_values(&labels[..2]).inc();
                            ctx.decisions.push("rate_limited");
                        }
                    }
                    rejection
                        .error
                        .send_with(session, &ctx.request_id, &rejection.headers)
                        .await?;
                    return Ok(true);
                }
            }
        }
        if let Action::Respond(r) = &route.action {
            let limits = match &ctx.verdict.limit {
                Some(limit) => route.policies.limit_headers(limit, None),
                None => Vec::new(),
            };
            respond(session, r, &ctx.request_id, &limits).await?;
            return Ok(true);
        }
        ctx.normalized_path = normalized;
        ctx.matched_len = matched_len;
        ctx.snapshot = Some(snapshot);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(upstream), Some(snapshot)) = (ctx.upstream(), ctx.snapshot.as_deref()) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream route in context");
        };
        let key = match &upstream.hash_on {
            Some(h) => hash_key(h, session, snapshot),
            None => Cow::Borrowed(&b""[..]),
        };
        let target = upstream
            .select(&key, |t| ctx.tried(&t.addr))
            // Every target was tried: a retry may go to one of them again.
            .or_else(|| {
                ctx.first_tried
                    .is_some()
                    .then(|| upstream.select(&key, |_| false))
                    .flatten()
            });
        let Some(target) = target else {
            return Error::e_explain(HTTPStatus(503), "no healthy target");
        };
        ctx.attempts += 1;
        ctx.record_try(target.addr);
        ctx.upstream_started = Some(Instant::now());
        let peer = Box::new(target.peer.clone());
        ctx.inflight = Some(target.acquire());
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A connect failure never reached the upstream: retrying is safe for every method.
        if ctx.upstream().is_some_and(|u| ctx.attempts <= u.retries) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(route), Some(snapshot)) = (ctx.route.as_deref(), ctx.snapshot.as_deref()) else {
            return Ok(());
        };
        // Hop-by-hop headers, and those a client names in `Connection`, are already gone:
        // Pingora's default upstream request policy strips them before this filter runs (and
        // refuses requests that nominate `Host` or `X-Forwarded-*`).
        let strip_query = match &ctx.verdict.strip {
            Some(Found::Query(name)) => Some(name.as_str()),
            _ => None,
        };
        if let Some(Found::Header(name)) = &ctx.verdict.strip {
            upstream_request.remove_header(name);
        }
        // Only the gateway says who the consumer is.
        upstream_request.remove_header(&plumbing::X_CONSUMER);
        if let Some(c) = &ctx.verdict.identity.consumer {
            upstream_request.insert_header(plumbing::titled::X_CONSUMER, c.header.clone())?;
        }
        for name in route.policies.claim_headers.iter() {
            upstream_request.remove_header(name);
        }
        if let Some(claims) = &ctx.verdict.identity.claims {
            for (name, value) in claims.iter() {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }
        if route.strip_prefix
            || route.rewrite.is_some()
            || ctx.normalized_path.is_some()
            || strip_query.is_some()
        {
            let uri = &upstream_request.uri;
            let mut path = Cow::Borrowed(ctx.normalized_path.as_deref().unwrap_or(uri.path()));
            if route.strip_prefix {
                let rest = path.get(ctx.matched_len..).unwrap_or("");
                path = Cow::Owned(if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    format!("/{rest}")
                });
            }
            if let Some(rw) = &route.rewrite {
                path = Cow::Owned(rw.apply(&path).into_owned());
            }
            let query = match (uri.query(), strip_query) {
                (Some(q), Some(name)) => Some(Cow::Owned(strip_query_param(q, name))),
                (q, _) => q.map(Cow::Borrowed),
            };
            let new = match query.filter(|q| !q.is_empty()) {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            let uri = http::Uri::try_from(new).or_err(
                ErrorType::InternalError,
                "rewritten path is not a valid URI",
            )?;
            upstream_request.set_uri(uri);
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| req.uri.authority().and_then(|a| a.as_str().parse().ok()));
        plumbing::set_forwarded(
            upstream_request,
            peer_ip(session),
            host,
            plumbing::PROTO_HTTP,
            &snapshot.trusted_proxies,
        )?;
        if !route.preserve_host {
            if let Some(guard) = &ctx.inflight {
                upstream_request
                    .insert_header(http::header::HOST, guard.target().host_header.clone())?;
            }
        }
        upstream_request.insert_header(plumbing::titled::X_REQUEST_ID, ctx.request_id.header())?;
        upstream_request.insert_header(plumbing::titled::TRACEPARENT, ctx.trace.header())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(up), Some(t)) = (ctx.upstream(), ctx.upstream_started) {
            let took = t.elapsed();
            up.metrics.duration.observe(took.as_secs_f64());
            ctx.upstream_took = Some(took);
        }
        let status = upstream_response.status.as_u16();
        if matches!(status, 502..=504)
            && session.req_header().method.is_idempotent()
            // A body larger than Pingora's retry buffer cannot be sent again.
            && !session.as_ref().retry_buffer_truncated()
            && ctx.upstream().is_some_and(|u| ctx.attempts <= u.retries)
        {
            // The client has seen nothing yet: try another target. Pingora turns the error
            // into a retry and calls `upstream_peer` again.
            let mut e = Error::explain(HTTPStatus(status), "retryable upstream status");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        plumbing::strip_hop_by_hop_response(upstream_response);
        upstream_response.insert_header(plumbing::titled::X_REQUEST_ID, ctx.request_id.header())?;
        if let (Some(route), Some(limit)) = (ctx.route.as_deref(), &ctx.verdict.limit) {
            for (name, value) in route.policies.limit_headers(limit, None) {
                upstream_response.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // 499, as nginx logs it: the client went away before any response was written.
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let took = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        // An attempt that never got a response header (timeout, reset, refused) still counts
        // in the upstream latency, or its p99 would hide the worst cases.
        if let (None, Some(t), Some(up)) = (ctx.upstream_took, ctx.upstream_started, ctx.upstream())
        {
            up.metrics.duration.observe(t.elapsed().as_secs_f64());
        }
        let method = &session.req_header().method;
        match ctx.route.as_deref() {
            Some(route) => route.metrics.record(method, status, took),
            None => UNROUTED.record(method, status, took),
        }
        if self.access_log.is_none() && self.tracer.is_none() {
            return;
        }
        let req = session.req_header();
        // Worked out once, by the policies, when the route has any.
        let client = ctx
            .client_ip
            .or_else(|| {
                let snapshot = self.snapshot.load();
                peer_ip(session)
                    .map(|peer| plumbing::client_ip(peer, &req.headers, &snapshot.trusted_proxies))
            })
            .map(plumbing::ip_text);
        if let Some(tracer) = &self.tracer {
            let end = std::time::SystemTime::now();
            tracer.export(&Finished {
                trace: &ctx.trace,
                start: end - took,
                end,
                method: method.as_str(),
                path: req.uri.path(),
                host: request_host(req),
                route: ctx.route.as_deref().map(|r| &*r.name),
                status,
                client: client.clone(),
                upstream: ctx.upstream().map(|u| &*u.name),
                target: ctx.inflight.as_ref().map(|g| &*g.target().label),
                request_id: ctx.request_id.as_str(),
            });
        }
        if let Some(log) = &self.access_log {
            log.log(&Entry {
                time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                request_id: ctx.request_id.as_str(),
                trace_id: ctx.trace.trace_id(),
                client,
                method: method.as_str(),
                host: request_host(req),
                path: req.uri.path(),
                status,
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                duration_ms: took.as_secs_f64() * 1e3,
                upstream_ms: ctx.upstream_took.map(|d| d.as_secs_f64() * 1e3),
                route: ctx.route.as_deref().map(|r| &*r.name),
                upstream: ctx.upstream().map(|u| &*u.name),
                target: ctx.inflight.as_ref().map(|g| &*g.target().label),
                consumer: ctx.verdict.identity.consumer.as_deref().map(|c| &*c.name),
                decisions: &ctx.decisions,
            });
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(err) = GatewayError::from_pingora(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        // Once the response has started, the only honest signal left is closing the connection.
        if session.response_written().is_none() {
            if ctx.request_id.is_empty() {
                ctx.request_id = RequestId::of(&session.req_header().headers);
            }
            // The connection is closed after a proxy failure: say so, so that a client does not
            // send its next request on it.
            session.set_keepalive(None);
            if let Err(write) = err.send(session, &ctx.request_id).await {
                log::debug!("could not send the error response: {write}");
            }
        }
        FailToProxy {
            error_code: err.status,
            can_reuse_downstream: false,
        }
    }
}
