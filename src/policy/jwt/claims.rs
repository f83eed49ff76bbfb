//! What a verified token's claims say: granted scopes, claims at dotted paths, and claims as
//! upstream header values.

use http::HeaderValue;
use serde_json::{Map, Value};

/// Scopes granted: `scope` (space-separated, OAuth 2) and `scp` (an array or a string).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(String::from)),
            Some(v) => out.extend(strings(Some(v))),
            None => {}
        }
    }
    out
}

/// A claim at a dotted path (`realm_access.roles`).
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |v, key| v.get(key))
}

/// The strings of a claim that is a string or an array of strings.
pub fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// A claim as an upstream header value: strings as they are, numbers and booleans printed,
/// arrays of those joined with commas. Objects, and values a header cannot carry, are skipped.
pub fn header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

/// The upstream headers `wanted` (header, claim) that `claims` has values for.
pub fn headers(
    claims: &Map<String, Value>,
    wanted: &[(http::HeaderName, String)],
) -> Vec<(http::HeaderName, HeaderValue)> {
    wanted
        .iter()
        .filter_map(|(header, claim)| Some((header.clone(), header_value(claims.get(claim)?)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_come_from_scope_and_scp() {
        let c = claims(json!({"scope": "read write", "scp": ["admin"]}));
        assert_eq!(scopes(&c), ["read", "write", "admin"]);
        assert!(scopes(&claims(json!({}))).is_empty());
    }

    #[test]
    fn a_dotted_path_reaches_into_objects() {
        let c = claims(json!({"realm_access": {"roles": ["a", "b"]}, "n": 1}));
        let path = ["realm_access".to_string(), "roles".to_string()];
        assert_eq!(strings(lookup(&c, &path)), ["a", "b"]);
        assert_eq!(lookup(&c, &["missing".to_string()]), None);
    }

    #[test]
    fn claims_become_header_values_when_they_can() {
        assert_eq!(header_value(&json!("x")).unwrap(), "x");
        assert_eq!(header_value(&json!(7)).unwrap(), "7");
        assert_eq!(header_value(&json!(["a", 2, true])).unwrap(), "a,2,true");
        assert_eq!(header_value(&json!({"a": 1})), None);
        assert_eq!(header_value(&json!(["a", {"b": 1}])), None);
        assert_eq!(header_value(&json!("new\nline")), None);
    }
}
