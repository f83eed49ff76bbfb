//! `google.api.http` path templates (google/api/http.proto), compiled at load and matched
//! against request paths.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A variable without `=` stands for one segment (`{id}` is `{id=*}`). A variable's value is
//! percent-decoded; one that spans several segments keeps its `/` and its `%2F`, as the
//! specification asks.

use percent_encoding::percent_decode_str;

/// One segment of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path (zero or more segments); only last.
    Rest,
}

/// A variable: the field it fills and the segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let why = |why: &str| format!("path template `{text}`: {why}");
        let bad = |w: &str| Err(why(w));
        let Some(rest) = text.strip_prefix('/') else {
            return bad("must start with `/`");
        };
        // The verb follows the last segment, outside any variable.
        let (body, verb) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('}') && !rest[i..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        let mut template = Template {
            segments: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        let mut chars = body;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let Some(close) = inner.find('}') else {
                    return bad("a `{` is not closed");
                };
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() || !field.split('.').all(is_ident) {
                    return bad("a variable must name a field (`{name}` or `{a.b}`)");
                }
                let start = template.segments.len();
                for part in pattern.split('/') {
                    template.segments.push(segment(part).map_err(|e| why(&e))?);
                }
                template.variables.push(Variable {
                    field: field.to_string(),
                    start,
                    end: template.segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                template
                    .segments
                    .push(segment(&chars[..end]).map_err(|e| why(&e))?);
                chars = &chars[end..];
            }
            chars = match chars.strip_prefix('/') {
                Some("") => return bad("ends with `/`"),
                Some(next) => next,
                None if chars.is_empty() => chars,
                None => return bad("a variable must be a whole segment"),
            };
        }
        let rest_at = template.segments.iter().position(|s| *s == Segment::Rest);
        if rest_at.is_some_and(|i| i + 1 != template.segments.len()) {
            return bad("`**` may only be the last segment");
        }
        Ok(template)
    }

    /// The fields the template's variables fill.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// The values of the variables for `path` (without its query), if it matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(&str, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = match path {
            "" => Vec::new(),
            p => p.split('/').collect(),
        };
        // Where each template segment starts in `parts`: `**` takes the rest.
        let mut at = Vec::with_capacity(self.segments.len() + 1);
        let mut i = 0;
        for s in &self.segments {
            at.push(i);
            match s {
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    i += 1;
                }
                Segment::One => {
                    if parts.get(i).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    i += 1;
                }
                Segment::Rest => i = parts.len(),
            }
        }
        at.push(i);
        if i != parts.len() {
            return None;
        }
        let values = self
            .variables
            .iter()
            .map(|v| {
                let raw = &parts[at[v.start]..at[v.end]];
                let value = match raw {
                    [one] => percent_decode_str(one).decode_utf8_lossy().into_owned(),
                    // Several segments: `%2F` stays as it is, so the `/`s stay the separators.
                    many => many
                        .iter()
                        .map(|p| decode_keeping_slash(p))
                        .collect::<Vec<_>>()
                        .join("/"),
                };
                (v.field.as_str(), value)
            })
            .collect();
        Some(values)
    }
}

fn segment(text: &str) -> Result<Segment, String> {
    match text {
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        "" => Err("an empty segment".into()),
        t if t.contains(['{', '}', '*']) => Err(format!("`{t}` is not a segment")),
        t => Ok(Segment::Literal(t.to_string())),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn decode_keeping_slash(segment: &str) -> String {
    segment
        .split("%2F")
        .flat_map(|p| p.split("%2f"))
        .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        let t = Template::parse(t).unwrap();
        let m = t.matches(path)?;
        Some(m.into_iter().map(|(f, v)| (f.to_string(), v)).collect())
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn single_segment_variables_match_one_segment_each() {
        let t = "/v1/shelves/{shelf}/items/{id}";
        assert_eq!(
            vars(t, "/v1/shelves/s1/items/7"),
            pairs(&[("shelf", "s1"), ("id", "7")])
        );
        assert_eq!(vars(t, "/v1/shelves/s1/items"), None);
        assert_eq!(vars(t, "/v1/shelves/s1/items/7/x"), None);
        assert_eq!(vars(t, "/v1/shelves//items/7"), None);
        assert_eq!(vars(t, "/v2/shelves/s1/items/7"), None);
    }

    #[test]
    fn values_are_percent_decoded() {
        assert_eq!(
            vars("/v1/{name}", "/v1/a%20b%C3%BC"),
            pairs(&[("name", "a bü")])
        );
    }

    #[test]
    fn a_variable_may_span_segments_and_keeps_its_slashes() {
        let t = "/v1/{name=shelves/*/items/*}:archive";
        assert_eq!(
            vars(t, "/v1/shelves/s1/items/i%2F2:archive"),
            pairs(&[("name", "shelves/s1/items/i%2F2")])
        );
        assert_eq!(vars(t, "/v1/shelves/s1/items/i2"), None);
        assert_eq!(
            vars("/files/{path=**}", "/files/a/b/c"),
            pairs(&[("path", "a/b/c")])
        );
        assert_eq!(vars("/files/{path=**}", "/files"), pairs(&[("path", "")]));
    }

    #[test]
    fn nested_fields_and_wildcards() {
        assert_eq!(
            vars("/v1/{book.shelf}/*/x", "/v1/s/anything/x"),
            pairs(&[("book.shelf", "s")])
        );
    }

    #[test]
    fn bad_templates_say_why() {
        for t in [
            "v1/x",
            "/v1/{id",
            "/v1/{}",
            "/v1/{1x}",
            "/v1/**/x",
            "/v1/x/",
            "/v1/a{id}",
            "/v1//x",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }
}
