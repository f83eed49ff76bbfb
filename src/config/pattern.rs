//! Regular expressions and route paths from the config, compiled once, as they are parsed.
//!
//! A regex that does not compile is kept with its error rather than failing the parse (which
//! would hide the other errors of its section); validation reports it at its position, and the
//! router and the rewrite use the compiled expression as it is.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A regex as written and as compiled, compared and shown by its source text.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    compiled: Result<regex::Regex, String>,
}

impl Pattern {
    pub fn new(source: &str) -> Pattern {
        Pattern {
            source: source.to_string(),
            compiled: regex::Regex::new(source).map_err(|e| first_line(&e.to_string())),
        }
    }

    /// The compiled regex, or why it does not compile.
    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn regex(&self) -> Result<&regex::Regex, &str> {
        self.compiled.as_ref().map_err(String::as_str)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Pattern::new(&String::deserialize(d)?))
    }
}

/// One entry of a route's `paths`: `"/prefix"`, `"=/exact"` or `"~regex"`.
#[derive(Clone, Debug, PartialEq)]
pub enum PathSpec {
    Prefix(String),
    Exact(String),
    Regex(Pattern),
}

impl Serialize for PathSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PathSpec::Prefix(p) => s.serialize_str(p),
            PathSpec::Exact(p) => s.serialize_str(&format!("={p}")),
            PathSpec::Regex(r) => s.serialize_str(&format!("~{}", r.source)),
        }
    }
}

impl<'de> Deserialize<'de> for PathSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = String::deserialize(d)?;
        if let Some(re) = p.strip_prefix('~') {
            return Ok(PathSpec::Regex(Pattern::new(re)));
        }
        match p.strip_prefix('=') {
            Some(exact) if exact.starts_with('/') => Ok(PathSpec::Exact(exact.to_string())),
            None if p.starts_with('/') => Ok(PathSpec::Prefix(p)),
            _ => Err(de::Error::custom(format!(
                "invalid path {p:?}: expected \"/prefix\", \"=/exact\" or \"~regex\""
            ))),
        }
    }
}

/// A regex error's text on one line.
pub fn first_line(s: &str) -> String {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct T {
        p: PathSpec,
    }

    fn parse(s: &str) -> Result<PathSpec, String> {
        toml::from_str::<T>(&format!("p = {s:?}"))
            .map(|t| t.p)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn paths_parse_once_and_print_back() {
        assert_eq!(parse("/api"), Ok(PathSpec::Prefix("/api".into())));
        assert_eq!(parse("=/x"), Ok(PathSpec::Exact("/x".into())));
        let re = parse("~^/u/[0-9]+$").unwrap();
        assert!(matches!(&re, PathSpec::Regex(r) if r.regex().unwrap().is_match("/u/42")));
        assert_eq!(serde_json::to_string(&re).unwrap(), "\"~^/u/[0-9]+$\"");
        assert!(parse("api").unwrap_err().contains("invalid path"));
        let Ok(PathSpec::Regex(bad)) = parse("~(") else {
            panic!("a bad regex is kept for validation to report")
        };
        assert!(bad.regex().unwrap_err().contains("unclosed group"));
    }
}
