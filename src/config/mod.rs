//! The configuration as written by the user: plain serde structs, parsed once.
//!
//! This is the bottom layer of the crate: it imports nothing else of it, so it can be read and
//! tested alone, and every other layer may use it (`docs/architecture.md`).
//!
//! A file is parsed into a spanned TOML tree first, then every section (each route, each upstream)
//! is deserialized on its own. A mistake in one route therefore does not hide a mistake in the
//! next: `pylon -t` reports every error it can find, each with `file:line:col`. The
//! `[policies.NAME]` tables are left as written: each kind's module parses its own, and the
//! checks across sections run after that, in the loader above this layer. Nothing here is used on
//! the request path.
//!
//! Each section's structs live in a file of their own, as `docs/configuration.md` presents them:
//! `server.rs` (`[server]`, `[[server.tls]]`, `[admin]`), `telemetry.rs` (`[log]`, `[tracing]`),
//! `cache.rs` (`[cache]`), `upstreams.rs`, `routes.rs` and `consumers.rs`. This file holds the whole `Config`, the
//! location types (`Located`, `ConfigError`, `Diagnostics`) and the parsing of a file.

mod cache;
mod consumers;
mod pattern;
mod routes;
mod secret;
mod server;
mod split;
mod telemetry;
mod units;
mod upstreams;

pub use cache::{CacheConfig, RedisNodes};
pub use consumers::*;
pub use pattern::{PathSpec, Pattern};
pub use routes::*;
pub use secret::{comparable, redacted_url, serialize_url, serialize_urls, shown_url, Secret};
pub use server::*;
pub use split::{CanaryConfig, MirrorConfig, SplitBackendConfig, SplitMatchConfig};
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
use std::time::Duration;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// The sections of a configuration file, but for its `[policies.NAME]` tables (their kinds
/// parse those). Serializes (for `GET /config`) without its source text, which may hold inline
/// secrets; secrets themselves serialize redacted.
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
    pub cache: CacheConfig,
    pub upstreams: BTreeMap<String, Located<UpstreamConfig>>,
    pub routes: Vec<Located<RouteConfig>>,
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

/// Read a configuration file's text.
pub fn read(path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(path).map_err(|e| Diagnostics {
        path: path.to_path_buf(),
        source: String::new(),
        errors: vec![ConfigError {
            span: None,
            message: format!("cannot read the file: {e}"),
        }],
    })
}

/// What this layer makes of a file's text on its own.
pub struct Parsed<'i> {
    /// Every section that parsed (`source` is left for the caller to fill).
    pub config: Config,
    /// Each `[policies.NAME]` table as written, in the file's order, for its kind to parse.
    pub policies: Vec<(String, Spanned<DeValue<'i>>)>,
    /// Upstreams that exist but failed to parse (their errors are in `errors`): their names
    /// still count as defined, so a route naming one gets no second error.
    pub unparsed: Vec<String>,
    pub errors: Vec<ConfigError>,
}

/// Parse configuration text into its sections, keeping every error.
pub fn parse(source: &str) -> Parsed<'_> {
    let mut parsed = Parsed {
        config: Config::default(),
        policies: Vec::new(),
        unparsed: Vec::new(),
        errors: Vec::new(),
    };
    let (root, syntax) = toml::de::DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        let errors = syntax.into_iter().map(|e| toml_error(e, &(0..0)));
        parsed.errors.extend(errors);
        return parsed;
    }
    let Parsed {
        config,
        policies,
        unparsed,
        errors,
    } = &mut parsed;
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
            "cache" => {
                if let Some(s) = section(value, errors) {
                    config.cache = s.value;
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
                    "unknown section `{other}`; expected one of `server`, `admin`, `log`, `tracing`, `cache`, `upstreams`, `routes`, `policies`, `consumers`"
                ),
            )),
        }
    }
    parsed
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
