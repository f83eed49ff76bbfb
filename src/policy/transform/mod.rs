//! `request_transform` and `response_transform`: headers, query, method and status, JSON
//! bodies by JSON Pointer, and body formats, on the way to the target and back.
//!
//! Both kinds share their settings ([`TransformConfig`]) and the compiled parts: templates
//! (`template.rs`), header and query edits (`edits.rs`), JSON edits (`json.rs`), format
//! conversions (`format.rs`) and the body buffer (`body.rs`). `request.rs` and `response.rs`
//! are the two filters. Everything is compiled at parse; a request only renders values that
//! have variables and, on routes that edit bodies, buffers the body up to `max_body`.

mod body;
mod edits;
mod format;
mod json;
mod request;
mod response;
pub mod template;

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfSize, ConfigError};
use crate::filter::Filter;
use crate::metrics::METRICS;
use body::{BodyEdits, Format, SKIPS};
use edits::{HeaderEdits, QueryEdits, Value};
use http::{HeaderName, Method};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use template::Template;
use toml::Spanned;

pub const REQUEST: Kind = Kind {
    name: "request_transform",
    parse: |src| parse(src, Side::Request),
};

pub const RESPONSE: Kind = Kind {
    name: "response_transform",
    parse: |src| parse(src, Side::Response),
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// `headers = {...}` or `query = {...}`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EditsConfig {
    /// Replace (or create) with this value.
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    /// Append this value beside any already there.
    #[serde(default)]
    pub add: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

impl EditsConfig {
    fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.rename.is_empty()
    }
}

/// `json = {...}`: edits by JSON Pointer.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonConfig {
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Put the whole document under this key.
    pub wrap: Option<String>,
    /// Replace the document by the member under this key.
    pub unwrap: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    #[serde(default)]
    pub headers: EditsConfig,
    /// Request only.
    #[serde(default)]
    pub query: EditsConfig,
    #[serde(default)]
    pub json: JsonConfig,
    /// Request only: the method sent to the target.
    pub method: Option<String>,
    /// Response only: the status sent to the client.
    pub status: Option<u16>,
    pub format: Option<Format>,
    /// Bodies are buffered only for `json` and `format` edits, up to this.
    #[serde(default = "default_max_body")]
    pub max_body: ConfSize,
}

fn default_max_body() -> ConfSize {
    ConfSize(1 << 20)
}

struct TransformSpec {
    config: TransformConfig,
    filter: Arc<dyn Filter>,
}

impl Spec for TransformSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        // Settings alone decide it: every compile shares it (its skip counters included).
        Ok(Compiled::Filter(Arc::clone(&self.filter)))
    }
}

/// Collects every error of one policy's settings.
struct Check<'s, 'a, 'i> {
    src: &'s Source<'a, 'i>,
    errors: Vec<ConfigError>,
}

impl Check<'_, '_, '_> {
    fn error(&mut self, message: impl std::fmt::Display) {
        self.errors.push(self.src.place.error(message));
    }

    fn name(&mut self, name: &str, what: &str) -> Option<HeaderName> {
        let parsed = HeaderName::from_bytes(name.as_bytes()).ok();
        if parsed.is_none() {
            self.error(format!("{name:?} is not a valid header name in `{what}`"));
        }
        parsed
    }

    fn template(&mut self, value: &Spanned<String>) -> Option<Template> {
        match Template::parse(value.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                let message = format!("policy `{}`: {e}", self.src.place.name);
                self.errors.push(ConfigError::at(value.span(), message));
                None
            }
        }
    }

    fn headers(&mut self, c: &EditsConfig) -> HeaderEdits {
        let mut values = |map: &BTreeMap<String, Spanned<String>>, what: &str| {
            let mut out = Vec::new();
            for (k, v) in map {
                let (Some(name), Some(t)) = (self.name(k, what), self.template(v)) else {
                    continue;
                };
                match Value::new(t) {
                    Ok(v) => out.push((name, v)),
                    Err(e) => self.errors.push(ConfigError::at(v.span(), e)),
                }
            }
            out.into_boxed_slice()
        };
        let set = values(&c.set, "headers.set");
        let add = values(&c.add, "headers.add");
        let remove = c
            .remove
            .iter()
            .filter_map(|n| self.name(n, "headers.remove"))
            .collect();
        let rename = c
            .rename
            .iter()
            .filter_map(|(a, b)| {
                Some((
                    self.name(a, "headers.rename")?,
                    self.name(b, "headers.rename")?,
                ))
            })
            .collect();
        HeaderEdits {
            remove,
            rename,
            set,
            add,
        }
    }

    fn query(&mut self, c: &EditsConfig) -> QueryEdits {
        let mut values = |map: &BTreeMap<String, Spanned<String>>| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), self.template(v)?)))
                .collect()
        };
        let set = values(&c.set);
        let add = values(&c.add);
        QueryEdits {
            remove: c.remove.clone().into(),
            rename: c.rename.clone().into_iter().collect(),
            set,
            add,
        }
    }

    fn json(&mut self, c: &JsonConfig) -> json::JsonEdits {
        let mut pointer = |p: &str| match json::pointer(p) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(format!("`json`: {e}"));
                None
            }
        };
        json::JsonEdits {
            unwrap: c.unwrap.clone(),
            remove: c.remove.iter().filter_map(|p| pointer(p)).collect(),
            rename: c
                .rename
                .iter()
                .filter_map(|(a, b)| Some((pointer(a)?, pointer(b)?)))
                .collect(),
            set: c
                .set
                .iter()
                .filter_map(|(p, v)| Some((pointer(p)?, v.clone())))
                .collect(),
            wrap: c.wrap.clone(),
        }
    }
}

fn parse(src: &mut Source<'_, '_>, side: Side) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: TransformConfig = src.settings()?;
    let mut check = Check {
        src,
        errors: Vec::new(),
    };
    let headers = check.headers(&config.headers);
    let query = check.query(&config.query);
    let json = check.json(&config.json);
    let fits = match (side, config.format) {
        (_, None) => true,
        (Side::Request, Some(f)) => f != Format::XmlToJson,
        (Side::Response, Some(f)) => f == Format::XmlToJson,
    };
    if !fits {
        check.error(match side {
            Side::Request => "a request's `format` is \"form_to_json\" or \"json_to_form\"",
            Side::Response => "a response's `format` is \"xml_to_json\"",
        });
    }
    let method = match (&config.method, side) {
        (None, _) => None,
        (Some(_), Side::Response) => {
            check.error("`method` is for request_transform (a response has `status`)");
            None
        }
        (Some(m), Side::Request) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                check.error(format!("{m:?} is not an HTTP method"));
                None
            }
        },
    };
    let status = match (config.status, side) {
        (None, _) => None,
        (Some(_), Side::Request) => {
            check.error("`status` is for response_transform (a request has `method`)");
            None
        }
        (Some(s), Side::Response) => match http::StatusCode::from_u16(s) {
            Ok(s) if !s.is_informational() => Some(s),
            _ => {
                check.error(format!("`status` {s} is not a final HTTP status (200-599)"));
                None
            }
        },
    };
    if side == Side::Response && !config.query.is_empty() {
        check.error("`query` is for request_transform");
    }
    if config.max_body.0 == 0 {
        check.error("`max_body` must be above zero");
    }
    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    let name = &src.place.name;
    let skipped = SKIPS
        .iter()
        .map(|reason| {
            METRICS
                .body_transforms_skipped
                .with_label_values(&[name.as_str(), reason])
        })
        .collect();
    let body = BodyEdits {
        json,
        format: config.format,
        max_body: config.max_body.bytes(),
        skipped,
    };
    let body = (!body.is_empty()).then_some(body);
    let filter: Arc<dyn Filter> = match side {
        Side::Request => Arc::new(request::RequestTransform {
            headers,
            query,
            method,
            body,
        }),
        Side::Response => Arc::new(response::ResponseTransform {
            headers,
            status,
            body,
        }),
    };
    Ok(Arc::new(TransformSpec { config, filter }))
}
