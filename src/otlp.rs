//! OpenTelemetry export: one server span per sampled request, sent by OTLP/HTTP.
//!
//! The span's ids are the ones the request already carries: the trace id of its `traceparent`
//! (continued or started by [`crate::ids::TraceContext`]), the gateway's span id (the
//! parent id the upstream received) and the client's span as parent. The SDK's tracer would mint
//! its own ids, so spans are handed straight to its batch processor, which queues them (dropping
//! when full, never blocking a request) and exports from its own thread. That thread starts with
//! the first span: one started before `pylon -d` forks would not survive the fork.

use crate::config::TracingConfig;
use crate::ids::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Spans waiting to be sent before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// What a request contributes to its span.
pub struct Finished<'a> {
    pub trace: &'a TraceContext,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub route: Option<&'a str>,
    pub status: u16,
    pub client: Option<String>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub request_id: &'a str,
}

pub struct Exporter {
    endpoint: String,
    timeout: Duration,
    interval: Duration,
    service_name: String,
    pub sample_ratio: f64,
    processor: OnceLock<Option<BatchSpanProcessor>>,
}

impl Exporter {
    /// The exporter `[tracing]` asks for, or `None` when it names no endpoint.
    pub fn new(config: &TracingConfig) -> Option<Exporter> {
        let endpoint = config.otlp_endpoint.as_ref()?.get_ref().clone();
        Some(Exporter {
            endpoint,
            timeout: config.export_timeout.0,
            interval: config.export_interval.0,
            service_name: config.service_name.clone(),
            sample_ratio: *config.sample_ratio.get_ref(),
            processor: OnceLock::new(),
        })
    }

    /// Queue the span of a finished request, if its trace is sampled.
    pub fn export(&self, request: &Finished) {
        if !request.trace.sampled() {
            return;
        }
        if let Some(processor) = self.processor.get_or_init(|| self.start()) {
            processor.on_end(span(request));
        }
    }

    /// Send what is queued now (blocking until the collector answers or times out).
    pub fn flush(&self) {
        if let Some(Some(processor)) = self.processor.get() {
            if let Err(e) = processor.force_flush() {
                log::warn!("OTLP flush to {} failed: {e}", self.endpoint);
            }
        }
    }

    fn start(&self) -> Option<BatchSpanProcessor> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&self.endpoint)
            .with_timeout(self.timeout)
            .build()
            .map_err(|e| log::error!("OTLP export to {} is off: {e}", self.endpoint))
            .ok()?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(self.interval)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(self.service_name.clone())
                .build(),
        );
        Some(processor)
    }
}

/// The request as an OTLP server span, with HTTP semantic-convention attributes.
fn span(r: &Finished) -> SpanData {
    let context = SpanContext::new(
        TraceId::from_bytes(r.trace.trace_id_bytes()),
        SpanId::from_bytes(r.trace.span_id_bytes()),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method.to_string()),
        KeyValue::new("url.path", r.path.to_string()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("pylon.request_id", r.request_id.to_string()),
    ];
    let optional = [
        ("server.address", r.host),
        ("http.route", r.route),
        ("pylon.upstream", r.upstream),
        ("server.target", r.target),
        ("client.address", r.client.as_deref()),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attributes.push(KeyValue::new(key, v.to_string()));
        }
    }
    let name = match r.route {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.to_string(),
    };
    SpanData {
        span_context: context,
        parent_span_id: r
            .trace
            .parent_id_bytes()
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: r.trace.parent_id_bytes().is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(name),
        start_time: r.start,
        end_time: r.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if r.status >= 500 {
            Status::error("")
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("pylon")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}
