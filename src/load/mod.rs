//! Loading: from a file's text to a checked configuration, the step `pylon -t` runs and every
//! start and reload builds its snapshot from.
//!
//! The config layer ([`crate::config`]) parses the sections it knows on its own. What needs the
//! layers above it happens here: each `[policies.NAME]` is parsed by its kind's module
//! ([`policies`]), then the checks across sections run, some asking the module that will use a
//! value ([`checks`]). Every error is kept with its place, so one run reports them all.

mod checks;
mod policies;

use crate::config::{self, Config, Diagnostics, Source};
use crate::policy::Policies;
use serde::Serialize;
use std::path::Path;

/// A configuration that passed every check: what a snapshot is built from.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// The file's sections.
    #[serde(flatten)]
    pub config: Config,
    /// Its policies, each parsed by its kind.
    pub policies: Policies,
}

/// Read, parse and check a configuration file.
pub fn load(path: &Path) -> Result<Checked, Diagnostics> {
    parse(path, config::read(path)?)
}

/// Parse and check configuration text; `path` is only used in messages and to resolve
/// relative paths.
pub fn parse(path: &Path, source: String) -> Result<Checked, Diagnostics> {
    let config::Parsed {
        mut config,
        policies,
        mut unparsed,
        mut errors,
    } = config::parse(&source);
    // Parsed once the consumers are known: some checks name them.
    let policies = policies::parse(policies, &config.consumers, &mut errors, &mut unparsed);
    // Check meaning even when some sections failed to parse, so one run shows everything;
    // names of sections that failed still count as defined.
    checks::check(&config, &policies, &unparsed, &mut errors);
    if errors.is_empty() {
        config.source = Source {
            path: path.to_path_buf(),
            text: source,
        };
        Ok(Checked { config, policies })
    } else {
        errors.sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
        Err(Diagnostics {
            path: path.to_path_buf(),
            source,
            errors,
        })
    }
}
