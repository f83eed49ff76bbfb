//! Pattern matching operators (@rx, @pm).
//!
//! Optimized with lazy regex compilation for fast rule parsing.

use super::traits::{Operator, OperatorResult};
use crate::error::{Error, Result};
use aho_corasick::AhoCorasick;
use once_cell::sync::OnceCell;

/// Regex operator (@rx) with lazy compilation.
///
/// The pattern's *syntax* is validated when the rule is loaded, but the
/// automaton is only built on first use — CRS defines hundreds of regex rules
/// and most requests exercise few of them.
///
/// Pylon patch: patterns are matched as ModSecurity matches them, which is
/// PCRE on bytes with `PCRE_DOTALL | PCRE_MULTILINE` and without UTF mode:
/// `.` takes a line break, `^`/`$` meet at line ends, `\w`/`\d`/`\s` are
/// ASCII and `\xff` is a byte. Rust's `regex` in that mode takes nearly every
/// CRS pattern; the few that need PCRE itself (backreferences, lookaround,
/// a `{` that is not a repetition) are compiled by PCRE2, at load.
pub struct RxOperator {
    pattern_str: String,
    matcher: Matcher,
}

/// Which engine runs a pattern.
enum Matcher {
    /// Rust's `regex`, built on first use. `None` once building failed, so
    /// the failure is reported once rather than retried per request.
    Rust(OnceCell<Option<regex::bytes::Regex>>),
    /// PCRE2 (JIT when available) for what `regex` cannot express.
    Pcre(pcre2::bytes::Regex),
}

/// Rust's `regex` set as ModSecurity sets PCRE.
fn rust_builder(pattern: &str) -> regex::bytes::RegexBuilder {
    let mut builder = regex::bytes::RegexBuilder::new(pattern);
    builder
        .unicode(false)
        .dot_matches_new_line(true)
        .multi_line(true);
    builder
}

impl RxOperator {
    /// Create a new regex operator, validating the pattern's syntax.
    ///
    /// Parsing with `regex-syntax` catches every syntax error the full
    /// compiler would, without building the automaton, so loading stays fast
    /// while a malformed pattern fails loudly at load instead of turning into
    /// a rule that can never match.
    #[inline]
    pub fn new(pattern: &str) -> Result<Self> {
        if pattern.is_empty() {
            return Err(Error::RegexCompile {
                pattern: pattern.to_string(),
                source: regex::Error::Syntax("empty pattern".to_string()),
            });
        }

        let rust = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .dot_matches_new_line(true)
            .multi_line(true)
            .build()
            .parse(pattern);
        let matcher = match rust {
            Ok(_) => Matcher::Rust(OnceCell::new()),
            Err(rust_error) => match pcre2::bytes::RegexBuilder::new()
                .dotall(true)
                .multi_line(true)
                .jit_if_available(true)
                .build(pattern)
            {
                Ok(regex) => Matcher::Pcre(regex),
                Err(pcre_error) => {
                    return Err(Error::RegexCompile {
                        pattern: pattern.to_string(),
                        source: regex::Error::Syntax(format!("{rust_error}; PCRE: {pcre_error}")),
                    })
                }
            },
        };

        Ok(Self {
            pattern_str: pattern.to_string(),
            matcher,
        })
    }

    /// Get or compile the `regex` pattern.
    ///
    /// Returns `None` if compilation failed. Syntax was already validated in
    /// [`RxOperator::new`], so reaching this is rare — a program too large to
    /// build, for instance. It is reported once, because a rule that cannot
    /// match must not do so silently.
    #[inline]
    fn rust_regex<'a>(
        &self,
        cell: &'a OnceCell<Option<regex::bytes::Regex>>,
    ) -> Option<&'a regex::bytes::Regex> {
        cell.get_or_init(|| match rust_builder(&self.pattern_str).build() {
            Ok(regex) => Some(regex),
            Err(e) => {
                tracing::error!(
                    pattern = %self.pattern_str,
                    error = %e,
                    "regex could not be compiled at first use; this rule can never match"
                );
                None
            }
        })
        .as_ref()
    }
}

/// TX:0 is the whole match and TX:1..9 the groups, by position (a group that
/// did not take part is empty), as ModSecurity's `capture` sets them.
fn matched(groups: impl Iterator<Item = Option<(usize, usize)>>, value: &[u8]) -> OperatorResult {
    let text = |(start, end): (usize, usize)| String::from_utf8_lossy(&value[start..end]).into_owned();
    let captures: Vec<String> = groups
        .take(10)
        .map(|g| g.map_or_else(String::new, text))
        .collect();
    OperatorResult {
        matched: true,
        matched_value: captures.first().cloned(),
        captures,
    }
}

impl Operator for RxOperator {
    fn execute(&self, value: &str) -> OperatorResult {
        let subject = value.as_bytes();
        match &self.matcher {
            Matcher::Rust(cell) => {
                let Some(regex) = self.rust_regex(cell) else {
                    return OperatorResult::no_match();
                };
                match regex.captures(subject) {
                    Some(c) => matched(c.iter().map(|m| m.map(|m| (m.start(), m.end()))), subject),
                    None => OperatorResult::no_match(),
                }
            }
            // An error is PCRE's match limit: no match, as ModSecurity takes it.
            Matcher::Pcre(regex) => match regex.captures(subject) {
                Ok(Some(c)) => matched(
                    (0..c.len()).map(|i| c.get(i).map(|m| (m.start(), m.end()))),
                    subject,
                ),
                _ => OperatorResult::no_match(),
            },
        }
    }

    fn name(&self) -> &'static str {
        "rx"
    }

    fn supports_capture(&self) -> bool {
        true
    }
}

/// Phrase match operator (@pm).
pub struct PmOperator {
    automaton: AhoCorasick,
    patterns: Vec<String>,
}

impl PmOperator {
    /// Create a new phrase match operator from space-separated patterns.
    pub fn new(patterns_str: &str) -> Result<Self> {
        let patterns: Vec<String> = patterns_str
            .split_whitespace()
            .map(|s| s.to_string())
            .collect();

        if patterns.is_empty() {
            return Err(Error::PatternSet {
                message: "empty pattern list".to_string(),
            });
        }

        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&patterns)
            .map_err(|e| Error::PatternSet {
                message: e.to_string(),
            })?;

        Ok(Self {
            automaton,
            patterns,
        })
    }

    /// Create a phrase match operator from a file.
    pub fn from_file(path: &str) -> Result<Self> {
        // Try the path as-is first, then common CRS locations
        let possible_paths = [
            path.to_string(),
            format!("test-rules/crs/rules/{}", path),
            format!("rules/{}", path),
        ];

        let mut content = None;
        let mut last_error = None;

        for p in &possible_paths {
            match std::fs::read_to_string(p) {
                Ok(c) => {
                    content = Some(c);
                    break;
                }
                Err(e) => {
                    last_error = Some(e);
                }
            }
        }

        let content = content.ok_or_else(|| Error::RuleFileLoad {
            path: path.into(),
            source: last_error.unwrap(),
        })?;

        let patterns: Vec<String> = content
            .lines()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|s| s.to_string())
            .collect();

        if patterns.is_empty() {
            return Err(Error::PatternSet {
                message: "empty pattern file".to_string(),
            });
        }

        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&patterns)
            .map_err(|e| Error::PatternSet {
                message: e.to_string(),
            })?;

        Ok(Self {
            automaton,
            patterns,
        })
    }
}

impl Operator for PmOperator {
    fn execute(&self, value: &str) -> OperatorResult {
        if let Some(mat) = self.automaton.find(value) {
            let matched = &self.patterns[mat.pattern().as_usize()];
            OperatorResult::matched(matched.clone())
        } else {
            OperatorResult::no_match()
        }
    }

    fn name(&self) -> &'static str {
        "pm"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rx_simple() {
        let op = RxOperator::new("^admin").unwrap();
        assert!(op.execute("admin").matched);
        assert!(!op.execute("user").matched);
    }

    #[test]
    fn test_rx_captures() {
        let op = RxOperator::new(r"user=(\w+)").unwrap();
        let result = op.execute("user=john");
        assert!(result.matched);
        // Pylon patch: TX:0 is the whole match.
        assert_eq!(result.captures, vec!["user=john", "john"]);
    }

    #[test]
    fn rx_matches_as_modsecurity_pcre_does() {
        // Dot-all, multi-line, ASCII classes, bytes.
        assert!(RxOperator::new("a.b").unwrap().execute("a\nb").matched);
        assert!(RxOperator::new("^b$").unwrap().execute("a\nb\nc").matched);
        assert!(!RxOperator::new(r"^\w+$").unwrap().execute("caf\u{e9}").matched);
        // What only PCRE takes: a literal `{`, a backreference, a lookahead.
        let op = RxOperator::new(r#"[oOcC]:\d+:\".+?\":\d+:{.*}"#).unwrap();
        assert!(op.execute(r#"O:8:"stdClass":0:{}"#).matched);
        let op = RxOperator::new(r"(\w)=\1").unwrap();
        assert!(op.execute("a=a").matched && !op.execute("a=b").matched);
        let op = RxOperator::new(r"x(?!y)").unwrap();
        assert!(op.execute("xz").matched && !op.execute("xy").matched);
        assert_eq!(op.execute("xz").captures, vec!["x"]);
    }

    #[test]
    fn test_pm_simple() {
        let op = PmOperator::new("admin root user").unwrap();
        assert!(op.execute("the admin user").matched);
        assert!(!op.execute("guest").matched);
    }

    #[test]
    fn test_pm_case_insensitive() {
        let op = PmOperator::new("ADMIN").unwrap();
        assert!(op.execute("admin").matched);
        assert!(op.execute("Admin").matched);
    }
}
