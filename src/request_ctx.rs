//! The state of one request across Pingora's hooks: what the filters see (`Context`), and the
//! gateway's own bookkeeping (the snapshot and route it is served by, its deadline, attempts,
//! held body, the guards that count it).

use crate::deadline::Deadline;
use crate::filter::{Chain, Context, Phases, Reply, RouteCache};
use crate::held_body::HeldBody;
use crate::metrics::{InflightRoute, OpenTunnel};
use crate::mirror::Copy;
use crate::reply;
use crate::router::{Action, Matched, Route};
use crate::runtime::Snapshot;
use crate::split::Pick;
use crate::upstream::{Attempts, Upstream};
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora_cache::HttpCache;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Per-request state: what the filters see, and the gateway's own bookkeeping.
pub struct RequestCtx {
    pub started: Instant,
    pub cx: Context,
    /// The configuration this request is served by, from its first hook to its last.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The route it matched, once routed.
    pub route: Option<Arc<Route>>,
    /// The pool it goes to: the route's upstream, or the backend its split picked.
    pub upstream: Option<Arc<Upstream>>,
    /// The split's pick, to count its outcome and set its sticky cookie.
    pub split: Option<Pick>,
    /// The route's mirror copy being gathered, once its first attempt went out.
    mirror: Option<Copy>,
    mirror_begun: bool,
    /// Takes the primary's status for the copy's comparison.
    mirror_primary: Option<oneshot::Sender<u16>>,
    /// The whole request's deadline, if its route or its gRPC call set one.
    pub deadline: Option<Deadline>,
    /// An HTTP/1.1 upgrade request (a WebSocket): its target reads wait `tunnel_idle_timeout`.
    pub upgrade: bool,
    pub matched: Matched,
    pub attempts: Attempts,
    /// Counts the request in `pylon_inflight_requests{route}` until dropped.
    pub route_inflight: Option<InflightRoute>,
    /// Counts an upgraded tunnel in `pylon_websocket_connections{route}` until dropped.
    pub tunnel: Option<OpenTunnel>,
    /// The body, or its start, read before the upstream (routes whose filters hold bodies).
    pub held: Option<HeldBody>,
    /// A body filter refused the request while its body was arriving.
    pub body_refused: bool,
}

impl Default for RequestCtx {
    /// A request that just arrived.
    fn default() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            cx: Context::default(),
            snapshot: None,
            route: None,
            upstream: None,
            split: None,
            mirror: None,
            mirror_begun: false,
            mirror_primary: None,
            deadline: None,
            upgrade: false,
            matched: Matched::default(),
            attempts: Attempts::default(),
            route_inflight: None,
            tunnel: None,
            held: None,
            body_refused: false,
        }
    }
}

impl RequestCtx {
    /// The route, to run its chain in `phase` with the context lent out; `None` when no
    /// filter of it takes part (then nothing is cloned).
    pub fn route_with(&self, phase: Phases) -> Option<Arc<Route>> {
        self.route.as_ref().filter(|r| r.chain.has(phase)).cloned()
    }

    /// The route's upstream-response filters on the target's answer; `body_replayable` says
    /// whether they may ask for another attempt (counted as a retry of the upstream's).
    pub fn upstream_response(
        &mut self,
        resp: &mut ResponseHeader,
        body_replayable: bool,
    ) -> Result<()> {
        let Some(route) = self.route_with(Phases::UPSTREAM_RESPONSE) else {
            return Ok(());
        };
        self.cx.body_replayable = body_replayable;
        let asked = route.chain.upstream_response(resp, &mut self.cx);
        if let (Err(e), Some(upstream)) = (&asked, self.upstream.as_deref()) {
            if e.retry() {
                crate::upstream::attempt::count_retry(upstream, "filter");
            }
        }
        asked
    }

    /// The chain whose response phases apply to this request (its route's, or the global
    /// policies' when it matched none), beside the context the filters take.
    pub fn answering(&mut self) -> (Option<&Chain>, &mut Context) {
        let chain = match (&self.route, &self.snapshot) {
            (Some(route), _) => Some(&route.chain),
            (None, Some(snapshot)) => Some(&snapshot.global),
            (None, None) => None,
        };
        (chain, &mut self.cx)
    }

    /// Where the routed request goes, once its request-phase filters let it through (a
    /// split's match rules and stickiness may need the consumer they found).
    pub fn choose_upstream(&mut self, req: &RequestHeader) {
        let Some(route) = self.route.as_deref() else {
            return;
        };
        match &route.action {
            Action::Upstream(upstream) => self.upstream = Some(Arc::clone(upstream)),
            Action::Split(split) => {
                let pick = split.pick(req, &self.cx.identity, self.cx.tls.is_some());
                self.upstream = Some(Arc::clone(split.upstream(pick.backend)));
                self.split = Some(pick);
            }
            Action::Respond(_) | Action::Aggregate(_) => {}
        }
    }

    /// A finished request of a split counts for its backend: failed when it got a 5xx or no
    /// answer, slow by its answer's start (the whole time without one).
    pub fn split_done(&self, status: u16, took: std::time::Duration) {
        let (Some(route), Some(pick)) = (self.route.as_deref(), &self.split) else {
            return;
        };
        if let Some(split) = route.split() {
            let failed = status >= 500 || self.attempts.unanswered();
            split.record(pick.backend, failed, self.attempts.took.unwrap_or(took));
        }
    }

    /// The request goes upstream as `header` (its first attempt): the route's mirror takes its
    /// copy, sent at once when the request has no body.
    pub fn mirror_begin(&mut self, header: &RequestHeader, body_empty: impl FnOnce() -> bool) {
        if std::mem::replace(&mut self.mirror_begun, true) {
            return;
        }
        let Some(mirror) = self.route.as_deref().and_then(|r| r.mirror.as_ref()) else {
            return;
        };
        self.mirror = mirror.begin(header);
        if self.mirror.is_some() && body_empty() {
            self.mirror_body(&None, true);
        }
    }

    /// A piece of the body went upstream: into the copy, which is sent at its end.
    pub fn mirror_body(&mut self, body: &Option<Bytes>, end_of_stream: bool) {
        let Some(mirror) = self.route.as_deref().and_then(|r| r.mirror.as_ref()) else {
            return;
        };
        let Some(copy) = self.mirror.as_mut() else {
            return;
        };
        if let Some(chunk) = body {
            if !mirror.add(copy, chunk) {
                self.mirror = None;
                return;
            }
        }
        if end_of_stream {
            if let Some(copy) = self.mirror.take() {
                self.mirror_primary = mirror.send(copy);
            }
        }
    }

    /// The request ended with `status`: the copy's comparison gets it.
    pub fn mirror_end(&mut self, status: u16) {
        if let Some(primary) = self.mirror_primary.take() {
            let _ = primary.send(status);
        }
    }

    /// The route's cache, for Pingora's cache hooks.
    pub fn cache(&self) -> Option<&dyn RouteCache> {
        self.route.as_deref()?.chain.cache()
    }

    /// The answer is about to go out: the route's cache says how it served it
    /// (`Cache-Status`), counted in the route's metrics and kept for the access log.
    pub fn cache_respond(
        &mut self,
        cache: &HttpCache,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) {
        let Some(route) = self.route.as_deref() else {
            return;
        };
        let said = route
            .chain
            .cache()
            .and_then(|c| c.respond(cache, req, resp, &self.cx));
        if let Some(result) = said {
            route.metrics.record_cache(result);
            self.cx.cache = Some(result);
        }
    }

    /// Write a reply of the gateway's own as the whole response.
    pub async fn send(&mut self, session: &mut Session, reply: Reply) -> Result<()> {
        let (chain, cx) = self.answering();
        reply::send(session, chain, cx, reply).await
    }
}

/// Before another attempt at the upstream, the route's filters prepare it
/// ([`crate::filter::Filter::retry`]); one that answers instead ends the request with its reply.
pub async fn prepare_retry(
    route: Option<&Route>,
    attempts: &Attempts,
    cx: &mut Context,
) -> Result<()> {
    let Some(route) = route.filter(|r| attempts.retrying() && r.chain.has(Phases::RETRY)) else {
        return Ok(());
    };
    if let Err(reply) = route.chain.retry(cx).await {
        let status = reply.status;
        cx.pending = Some(reply);
        return Error::e_explain(HTTPStatus(status), "a filter answered the retry");
    }
    Ok(())
}
