//! A part's path, as written: `/users/{jwt.sub}/orders?since={query.since}`. Compiled at load;
//! every substituted value is percent-encoded, so a claim or a query value can neither add a
//! path segment (`../admin`) nor a parameter (`&admin=1`).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use regex::Regex;
use serde_json::Value;

/// Everything but RFC 3986's unreserved characters is encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq)]
enum Var {
    Jwt(String),
    Path(String),
    Query(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartPath(Vec<Piece>);

/// Where a part's variables come from, for one request.
pub struct Values<'a> {
    pub jwt: Option<&'a serde_json::Map<String, Value>>,
    /// The request path's named groups, from the route's regexes.
    pub path: Option<regex::Captures<'a>>,
    pub query: &'a str,
}

impl PartPath {
    /// Parse `src`; `groups` are the named groups of the route's path regexes, which are all
    /// `{path.<name>}` may name.
    pub fn parse(src: &str, groups: &[String]) -> Result<PartPath, String> {
        if !src.starts_with('/') {
            return Err(format!("a part's path must start with `/`, not {src:?}"));
        }
        let mut pieces = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in {src:?}"))?
                + open;
            let name = &rest[open + 1..close];
            let var = match name.split_once('.') {
                Some(("jwt", c)) if !c.is_empty() => Var::Jwt(c.to_string()),
                Some(("query", q)) if !q.is_empty() => Var::Query(q.to_string()),
                Some(("path", g)) if groups.iter().any(|n| n == g) => Var::Path(g.to_string()),
                Some(("path", g)) => {
                    return Err(format!(
                        "`{{path.{g}}}`: the route's path regexes have no group named `{g}` \
                         (write `(?P<{g}>...)` in a `~regex` path)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "unknown variable `{{{name}}}` (known: {{jwt.<claim>}}, {{path.<name>}}, \
                         {{query.<name>}})"
                    ))
                }
            };
            pieces.push(Piece::Var(var));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        if pieces
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if t.contains('}')))
        {
            return Err(format!("a `}}` without its `{{` in {src:?}"));
        }
        Ok(PartPath(pieces))
    }

    /// The path for this request, or the variable that has no value (no token, no such claim,
    /// parameter or group).
    pub fn render(&self, values: &Values<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            let value = match piece {
                Piece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Piece::Var(Var::Jwt(c)) => match values.jwt.and_then(|j| j.get(c)) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    _ => None,
                },
                Piece::Var(Var::Query(q)) => form_urlencoded::parse(values.query.as_bytes())
                    .find(|(k, _)| k == q)
                    .map(|(_, v)| v.into_owned()),
                Piece::Var(Var::Path(g)) => values
                    .path
                    .as_ref()
                    .and_then(|c| c.name(g))
                    .map(|m| m.as_str().to_string()),
            };
            let value = value.ok_or_else(|| format!("{piece:?}"))?;
            out.extend(utf8_percent_encode(&value, ENCODE));
        }
        Ok(out)
    }
}

/// The named groups of `regexes`.
pub fn groups(regexes: &[Regex]) -> Vec<String> {
    regexes
        .iter()
        .flat_map(|r| r.capture_names().flatten().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_are_filled_in_and_encoded() {
        let re = Regex::new("^/dash/(?P<team>[^/]+)$").unwrap();
        let p = PartPath::parse(
            "/users/{jwt.sub}/teams/{path.team}?since={query.since}&n={jwt.n}",
            &groups(std::slice::from_ref(&re)),
        )
        .unwrap();
        let jwt = json!({"sub": "../admin", "n": 3});
        let values = Values {
            jwt: jwt.as_object(),
            path: re.captures("/dash/blue team"),
            query: "since=2024-01-01&x=1",
        };
        assert_eq!(
            p.render(&values).unwrap(),
            "/users/..%2Fadmin/teams/blue%20team?since=2024-01-01&n=3"
        );
        let none = Values {
            jwt: None,
            path: None,
            query: "",
        };
        assert!(p.render(&none).is_err());
    }

    #[test]
    fn unknown_variables_and_groups_are_errors() {
        assert!(PartPath::parse("/x/{path.id}", &[])
            .unwrap_err()
            .contains("no group named `id`"));
        assert!(PartPath::parse("/x/{user}", &[])
            .unwrap_err()
            .contains("unknown variable"));
        assert!(PartPath::parse("/x/{jwt.sub", &[]).is_err());
        assert!(PartPath::parse("x", &[]).is_err());
        assert!(PartPath::parse("/a}", &[]).is_err());
    }
}
