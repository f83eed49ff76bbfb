//! Detection operators (@detectSQLi, @detectXSS).
//!
//! Pylon patch: these use libinjection itself (`libinjectionrs`, a port of its tokenizer
//! and fingerprint tables), as ModSecurity does; the crate's own approximation by
//! patterns flagged ordinary values such as `11=1`.

use super::traits::{Operator, OperatorResult};

/// SQL injection detection operator (@detectSQLi).
pub struct DetectSqliOperator;

impl Operator for DetectSqliOperator {
    fn execute(&self, value: &str) -> OperatorResult {
        let result = libinjectionrs::detect_sqli(value.as_bytes());
        if result.is_injection() {
            OperatorResult::matched(
                result
                    .fingerprint
                    .map(|f| f.as_str().to_string())
                    .unwrap_or_default(),
            )
        } else {
            OperatorResult::no_match()
        }
    }

    fn name(&self) -> &'static str {
        "detectSQLi"
    }
}

/// XSS detection operator (@detectXSS).
pub struct DetectXssOperator;

impl Operator for DetectXssOperator {
    fn execute(&self, value: &str) -> OperatorResult {
        if libinjectionrs::detect_xss(value.as_bytes()).is_injection() {
            OperatorResult::matched(String::new())
        } else {
            OperatorResult::no_match()
        }
    }

    fn name(&self) -> &'static str {
        "detectXSS"
    }
}
