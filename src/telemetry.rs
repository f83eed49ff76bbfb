//! What a finished request leaves behind: its access-log line and its trace span.

use crate::access_log::{AccessLog, Entry};
use crate::filter::CacheResult;
use crate::grpc::Code;
use crate::headers::request_host;
use crate::otlp::{Exporter, Finished};
use crate::request_ctx::RequestCtx;
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The access log and the span exporter, each when configured.
pub struct Telemetry {
    pub access_log: Option<AccessLog>,
    pub tracer: Option<Arc<Exporter>>,
}

impl Telemetry {
    /// Share of new traces to record (a client's sampled flag decides for its own).
    pub fn sample_ratio(&self) -> f64 {
        self.tracer.as_ref().map_or(1.0, |t| t.sample_ratio)
    }

    /// Log and trace one finished request.
    pub fn record(&self, session: &Session, ctx: &mut RequestCtx, status: u16, took: Duration) {
        let RequestCtx {
            route,
            upstream,
            cx,
            attempts,
            ..
        } = ctx;
        let route = route.as_deref();
        let upstream = upstream.as_deref().map(|u| &*u.name);
        if self.access_log.is_none() && self.tracer.is_none() {
            return;
        }
        let req = session.req_header();
        let client = cx.client_ip(&req.headers);
        let client = cx
            .peer
            .is_some()
            .then(|| crate::client_addr::ip_text(client));
        let target = attempts.target().map(|t| &*t.label);
        if let Some(tracer) = &self.tracer {
            let end = SystemTime::now();
            tracer.export(&Finished {
                trace: &cx.trace,
                start: end - took,
                end,
                method: req.method.as_str(),
                path: req.uri.path(),
                host: request_host(req),
                route: route.map(|r| &*r.name),
                status,
                client: client.clone(),
                upstream,
                target,
                request_id: cx.request_id.as_str(),
            });
        }
        if let Some(log) = &self.access_log {
            log.log(&Entry {
                time: humantime::format_rfc3339_millis(SystemTime::now()),
                request_id: cx.request_id.as_str(),
                trace_id: cx.trace.trace_id(),
                client,
                method: req.method.as_str(),
                host: request_host(req),
                path: req.uri.path(),
                status,
                grpc_status: cx.grpc_status.map(Code::name),
                cache: cx.cache.map(CacheResult::name),
                bytes_in: session.body_bytes_read(),
                bytes_out: session.body_bytes_sent(),
                duration_ms: took.as_secs_f64() * 1e3,
                upstream_ms: attempts.took.map(|d| d.as_secs_f64() * 1e3),
                route: route.map(|r| &*r.name),
                upstream,
                target,
                consumer: cx.identity.consumer.as_deref().map(|c| &*c.name),
                decisions: &cx.notes,
            });
        }
    }
}
