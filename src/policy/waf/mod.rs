//! `waf`: attack detection on the request, by one of two engines behind [`Engine`]:
//!
//! - `libinjection` ([`libinjection`]): SQL injection and XSS by libinjection's fingerprints,
//!   in the places `inspect` names, after URL and HTML decoding. Fast (microseconds), narrow.
//! - `crs` ([`crs`]): the OWASP Core Rule Set on libmodsecurity, with `paranoia_level` and
//!   `anomaly_threshold`. Broad (protocol enforcement, LFI, RCE, PHP, Java, session fixation
//!   besides SQLi and XSS), and about a millisecond of CPU per request, run on blocking threads.
//!
//! The policy itself is the same for both: `mode = "block"` answers `403 request_blocked`,
//! `"detect"` lets the request through; both count every finding in
//! `pylon_blocked_requests_total{route,policy,reason}` and log where it was, never the value.
//! With `inspect` holding `body`, a request body is held back (up to `max_body`; a larger one is
//! inspected up to there and the rest streams through) until the engine has seen it, so
//! nothing of a refused request reaches the upstream.

mod crs;
mod libinjection;

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfSize, ConfigError};
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply, Stage};
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::sync::Arc;

pub const KIND: Kind = Kind { name: "waf", parse };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Block,
    Detect,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "default_engine")]
    pub engine: String,
    /// CRS only: 1 (default) to 4; higher catches more and refuses more that is benign.
    pub paranoia_level: Option<u8>,
    /// CRS only: the inbound anomaly score that refuses a request (default 5: one critical rule).
    pub anomaly_threshold: Option<u32>,
    /// CRS only: the directory of the rule files (`REQUEST-*.conf` and their data files).
    pub crs_rules: Option<String>,
    /// CRS only: the CRS setup file, read before the rules.
    pub crs_setup: Option<String>,
    #[serde(default = "default_inspect")]
    pub inspect: Vec<String>,
    /// The headers `inspect = ["headers"]` reads (libinjection; CRS reads every header).
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// The most of a body that is read; a larger one is inspected up to this and the rest
    /// streams through.
    #[serde(default = "default_max_body")]
    pub max_body: ConfSize,
    #[serde(default)]
    pub exclude_rules: Vec<String>,
}

fn default_mode() -> Mode {
    Mode::Block
}
fn default_engine() -> String {
    "libinjection".into()
}
fn default_inspect() -> Vec<String> {
    ["path", "query", "headers", "cookies", "body"]
        .map(String::from)
        .to_vec()
}
fn default_headers() -> Vec<String> {
    ["user-agent", "referer"].map(String::from).to_vec()
}
fn default_max_body() -> ConfSize {
    ConfSize(64 << 10)
}

/// What an engine found: the metric's `reason` and, for the log, where (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub reason: &'static str,
    pub at: String,
}

/// An engine's answer about a request head.
pub enum Head {
    /// Nothing found, and the body (if any) is not wanted.
    Clean,
    Found(Finding),
    /// The body is wanted: it is held back and handed to [`Engine::body`] with this state.
    Body(Box<dyn Any + Send + Sync>),
}

/// A detection engine: one file per engine, chosen by `engine = "..."`.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Inspect the head. `body` says whether the policy inspects bodies and this request
    /// has one; only then may the engine ask for it.
    async fn head(&self, req: &RequestHeader, cx: &Context, body: bool) -> Head;

    /// Inspect the body the head asked for (`whole`: all of it, not a `max_body` prefix).
    async fn body(
        &self,
        state: Box<dyn Any + Send + Sync>,
        body: &[u8],
        whole: bool,
    ) -> Option<Finding>;
}

struct WafSpec {
    config: WafConfig,
    filter: Arc<Waf>,
}

impl Spec for WafSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

pub struct Waf {
    name: Arc<str>,
    mode: Mode,
    engine: Box<dyn Engine>,
    body: bool,
    max_body: usize,
}

const PLACES: [&str; 5] = ["path", "query", "headers", "cookies", "body"];

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: WafConfig = src.settings()?;
    let mut errors = Vec::new();
    for i in &config.inspect {
        if !PLACES.contains(&i.as_str()) {
            errors.push(src.place.error(format!(
                "`inspect`: unknown place {i:?} (path, query, headers, cookies, body)"
            )));
        }
    }
    let crs_only = config.paranoia_level.is_some()
        || config.anomaly_threshold.is_some()
        || config.crs_rules.is_some()
        || config.crs_setup.is_some();
    let engine: Option<Box<dyn Engine>> = match config.engine.as_str() {
        "libinjection" => {
            if crs_only {
                errors.push(src.place.error(
                    "`paranoia_level`, `anomaly_threshold`, `crs_rules` and `crs_setup` are for \
                     `engine = \"crs\"`",
                ));
            }
            libinjection::Libinjection::new(&config)
                .map_err(|e| errors.extend(e.into_iter().map(|m| src.place.error(m))))
                .ok()
                .map(|e| Box::new(e) as Box<dyn Engine>)
        }
        "crs" => crs::Crs::load(&config)
            .map_err(|e| errors.extend(e.into_iter().map(|m| src.place.error(m))))
            .ok()
            .map(|e| Box::new(e) as Box<dyn Engine>),
        other => {
            errors.push(
                src.place
                    .error(format!("unknown engine {other:?} (libinjection or crs)")),
            );
            None
        }
    };
    let Some(engine) = engine.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    let filter = Arc::new(Waf {
        name: src.place.name.as_str().into(),
        mode: config.mode,
        engine,
        body: config.inspect.iter().any(|i| i == "body"),
        max_body: config.max_body.bytes(),
    });
    Ok(Arc::new(WafSpec { config, filter }))
}

/// Whether a request says it has a body.
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

impl Waf {
    /// Count (and in block mode refuse) a finding.
    fn found(&self, f: Finding, cx: &mut Context) -> Result<(), Reply> {
        METRICS
            .blocked_requests
            .with_label_values(&[cx.route_name(), &self.name, f.reason])
            .inc();
        log::warn!(
            "waf `{}`: {} in {} (request {}, {})",
            self.name,
            f.reason,
            f.at,
            cx.request_id.as_str(),
            if self.mode == Mode::Block {
                "blocked"
            } else {
                "detected only"
            }
        );
        match self.mode {
            Mode::Block => {
                cx.notes.push("waf_blocked");
                Err(Reply::error(error::REQUEST_BLOCKED))
            }
            Mode::Detect => {
                cx.notes.push("waf_detected");
                Ok(())
            }
        }
    }
}

/// A body being held back until the engine has inspected it.
struct Held {
    state: Box<dyn Any + Send + Sync>,
    data: Vec<u8>,
}

#[async_trait]
impl Filter for Waf {
    fn phases(&self) -> Phases {
        match self.body {
            true => Phases::REQUEST | Phases::REQUEST_BODY,
            false => Phases::REQUEST,
        }
    }

    /// Before authentication: an attack costs no credential check.
    fn stage(&self) -> Stage {
        Stage::BeforeAuth
    }

    /// A body is judged before the target has a byte of the request.
    fn holds_body(&self) -> usize {
        match self.body {
            true => self.max_body,
            false => 0,
        }
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        let body = self.body && has_body(req);
        match self.engine.head(req, cx, body).await {
            Head::Clean => Ok(()),
            Head::Found(f) => self.found(f, cx),
            Head::Body(state) => {
                cx.state.insert(Held {
                    state,
                    data: Vec::new(),
                });
                Ok(())
            }
        }
    }

    async fn request_body(
        &self,
        chunk: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(held) = cx.state.get_mut::<Held>() else {
            return Ok(());
        };
        if let Some(c) = chunk.as_deref() {
            held.data.extend_from_slice(c);
        }
        let full = held.data.len() > self.max_body;
        if !end && !full {
            // Held back until inspected (an empty chunk is not sent).
            *chunk = Some(Bytes::new());
            return Ok(());
        }
        let Some(Held { state, data }) = cx.state.remove::<Held>() else {
            return Ok(());
        };
        let inspected = &data[..data.len().min(self.max_body)];
        if let Some(f) = self.engine.body(state, inspected, !full).await {
            self.found(f, cx)?;
        }
        *chunk = Some(Bytes::from(data));
        Ok(())
    }
}
