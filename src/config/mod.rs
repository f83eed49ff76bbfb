//! The configuration as written by the user: plain serde structs, parsed once.
//!
//! A file is parsed into a spanned TOML tree first, then every section (each route, each upstream)
//! is deserialized on its own. A mistake in one route therefore does not hide a mistake in the
//! next: `pylon -t` reports every error it can find, each with `file:line:col`. The structs are
//! then checked for meaning (see [`validate`]) and handed to the runtime compiler; nothing here is
//! used on the request path.
//!
//! Each section's structs live in a file of their own, as `docs/configuration.md` presents them:
//! `server.rs` (`[server]`, `[[server.tls]]`, `[admin]`), `telemetry.rs` (`[log]`, `[tracing]`),
//! `upstreams.rs`, `routes.rs` and `consumers.rs`. This file holds the whole `Config`, the
//! location types (`Located`, `ConfigError`, `Diagnostics`) and the parsing of a file.

mod consumers;
mod pattern;
mod routes;
mod secret;
mod server;
mod telemetry;
mod units;
mod upstreams;
pub mod validate;

pub use consumers::*;
pub use pattern::{PathSpec, Pattern};
pub use routes::*;
pub use secret::Secret;
pub use server::*;
pub use telemetry::*;
pub use units::{ConfDuration, ConfSize, ConfTimeout};
pub use upstreams::*;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// The whole configuration file. Serializes (for `GET /config`) without its source text,
/// which may hold inline secrets; secrets themselves serialize redacted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    /// Where it was read from, to place errors found after parsing.
    #[serde(skip)]
    pub source: Source,
    pub server: ServerConfig,
    /// The admin listener; absent: no admin API.
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub upstreams: BTreeMap<String, Located<UpstreamConfig>>,
    pub routes: Vec<Located<RouteConfig>>,
    pub policies: BTreeMap<String, Located<PolicyConfig>>,
    pub consumers: BTreeMap<String, Located<ConsumerConfig>>,
}

/// A value together with the byte range of the table it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Located<T> {
    pub value: T,
    #[serde(skip)]
    pub span: Range<usize>,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A serde default of `true`.
fn yes() -> bool {
    true
}

/// `[policies.NAME]`: a policy of one kind, parsed and checked by its kind's module
/// ([`crate::policy::registry`]); routes name policies.
#[derive(Clone)]
pub struct PolicyConfig {
    pub kind: &'static str,
    pub spec: Arc<dyn crate::policy::Spec>,
}

impl fmt::Debug for PolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.spec)
    }
}

impl Serialize for PolicyConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut settings = match self.spec.describe() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        settings.insert("kind".into(), self.kind.into());
        settings.serialize(serializer)
    }
}

/// A configuration file's path and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl ConfigError {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            span: Some(span),
            message: message.into(),
        }
    }
}

/// Every problem found in one file, printable as `FILE:LINE:COL: message` lines.
#[derive(Debug)]
pub struct Diagnostics {
    pub path: PathBuf,
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl Diagnostics {
    pub fn new(source: &Source, errors: Vec<ConfigError>) -> Self {
        Diagnostics {
            path: source.path.clone(),
            source: source.text.clone(),
            errors,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = &self.source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let (line, col) = e.span.as_ref().map_or((1, 1), |s| self.line_col(s.start));
            // toml's messages can run over several lines; keep one error per line.
            let msg = e.message.trim().replace('\n', " ");
            write!(f, "{}:{line}:{col}: {msg}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let source = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        path: path.to_path_buf(),
        source: String::new(),
        errors: vec![ConfigError {
            span: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, source)
}

/// Parse and validate configuration text; `path` is only used in messages and to resolve
/// relative paths.
pub fn parse(path: &Path, source: String) -> Result<Config, Diagnostics> {
    let mut errors = Vec::new();
    let mut unparsed = Vec::new();
    let mut config = parse_sections(&source, &mut errors, &mut unparsed);
    // Check meaning even when some sections failed to parse, so one run shows everything;
    // names of sections that failed still count as defined.
    validate::check(&config, &unparsed, &mut errors);
    if errors.is_empty() {
        config.source = Source {
            path: path.to_path_buf(),
            text: source,
        };
        Ok(config)
    } else {
        errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
        Err(Diagnostics {
            path: path.to_path_buf(),
            source,
            errors,
        })
    }
}

fn toml_error(e: toml::de::Error, fallback: &Range<usize>) -> ConfigError {
    ConfigError {
        span: Some(e.span().unwrap_or_else(|| fallback.clone())),
        message: e.message().to_string(),
    }
}

fn section<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Located<T>> {
    let span = value.span();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(value) => Some(Located { value, span }),
        Err(e) => {
            errors.push(toml_error(e, &span));
            None
        }
    }
}

/// `unparsed` receives the names of upstreams and policies that exist but failed to deserialize.
fn parse_sections(
    source: &str,
    errors: &mut Vec<ConfigError>,
    unparsed: &mut Vec<String>,
) -> Config {
    let (root, syntax) = toml::de::DeTable::parse_recoverable(source);
    let mut config = Config::default();
    let mut policies = Vec::new();
    if !syntax.is_empty() {
        errors.extend(syntax.into_iter().map(|e| toml_error(e, &(0..0))));
        return config;
    }
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "server" => {
                if let Some(s) = section(value, errors) {
                    config.server = s.value;
                }
            }
            "admin" => {
                if let Some(s) = section(value, errors) {
                    config.admin = Some(s.value);
                }
            }
            "log" => {
                if let Some(s) = section(value, errors) {
                    config.log = s.value;
                }
            }
            "tracing" => {
                if let Some(s) = section(value, errors) {
                    config.tracing = s.value;
                }
            }
            "upstreams" => {
                for_each_entry(value, errors, "upstreams", |name, v, errors| {
                    match section(v, errors) {
                        Some(u) => {
                            config.upstreams.insert(name, u);
                        }
                        None => unparsed.push(name),
                    }
                });
            }
            "policies" => {
                // Parsed once the consumers are known: some checks name them.
                for_each_entry(value, errors, "policies", |name, v, _| {
                    policies.push((name, v));
                });
            }
            "consumers" => {
                for_each_entry(value, errors, "consumers", |name, v, errors| {
                    if let Some(c) = section(v, errors) {
                        config.consumers.insert(name, c);
                    }
                });
            }
            "routes" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Array(items) => {
                        for item in items {
                            if let Some(r) = section(item, errors) {
                                config.routes.push(r);
                            }
                        }
                    }
                    _ => errors.push(ConfigError::at(
                        span,
                        "`routes` must be an array of tables ([[routes]])",
                    )),
                }
            }
            other => errors.push(ConfigError::at(
                key_span,
                format!(
                    "unknown section `{other}`; expected one of `server`, `admin`, `log`, `tracing`, `upstreams`, `routes`, `policies`, `consumers`"
                ),
            )),
        }
    }
    for (name, value) in policies {
        match parse_policy(&name, value, &config.consumers) {
            Ok(p) => {
                config.policies.insert(name, p);
            }
            Err(e) => {
                errors.extend(e);
                unparsed.push(name);
            }
        }
    }
    config
}

/// One `[policies.NAME]`: its `kind` picks the module that parses and checks the rest.
fn parse_policy(
    name: &str,
    value: Spanned<DeValue<'_>>,
    consumers: &BTreeMap<String, Located<ConsumerConfig>>,
) -> Result<Located<PolicyConfig>, Vec<ConfigError>> {
    use crate::policy::{registry, Place, Source};
    let span = value.span();
    let place = Place {
        name: name.to_string(),
        span: span.clone(),
    };
    let DeValue::Table(mut table) = value.into_inner() else {
        return Err(vec![place.error("expected a table")]);
    };
    let kind = match table.remove("kind").map(|k| (k.span(), k.into_inner())) {
        Some((kspan, DeValue::String(k))) => match registry::find(&k) {
            Some(kind) => kind,
            None => {
                return Err(vec![ConfigError::at(
                    kspan,
                    format!(
                        "policy `{name}`: unknown kind `{k}`; expected one of {}",
                        registry::names()
                    ),
                )])
            }
        },
        Some((kspan, _)) => return Err(vec![ConfigError::at(kspan, "`kind` must be a string")]),
        None => {
            return Err(vec![place.error(format!(
                "missing `kind`; expected one of {}",
                registry::names()
            ))])
        }
    };
    let value = Spanned::new(span.clone(), DeValue::Table(table));
    let spec = (kind.parse)(&mut Source::new(place, value, consumers))?;
    Ok(Located {
        value: PolicyConfig {
            kind: kind.name,
            spec,
        },
        span,
    })
}

/// Visit the entries of a `[section.NAME]` table.
fn for_each_entry<'i>(
    value: Spanned<DeValue<'i>>,
    errors: &mut Vec<ConfigError>,
    section: &str,
    mut f: impl FnMut(String, Spanned<DeValue<'i>>, &mut Vec<ConfigError>),
) {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(table) => {
            for (name, v) in table {
                f(name.into_inner().into_owned(), v, errors);
            }
        }
        _ => errors.push(ConfigError::at(
            span,
            format!("`{section}` must be a table of named entries ([{section}.NAME])"),
        )),
    }
}
