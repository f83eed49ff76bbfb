//! Values with variables (`"$consumer"`, `"user-${jwt.sub}"`), compiled once at load into
//! literal text and variable slots, so a request only copies and looks up.
//!
//! Variables: `$client_ip`, `$request_id`, `$consumer`, `$route`, `$jwt.<claim>`,
//! `$header.<name>`, `$query.<name>`; `${...}` delimits one inside text, `$$` is a `$`. A name
//! Pylon does not know is an error at load, not an empty string at run time.

use crate::filter::Context;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
enum Var {
    ClientIp,
    RequestId,
    Consumer,
    Route,
    Jwt(Box<str>),
    Header(HeaderName),
    Query(Box<str>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(Box<str>),
    Var(Var),
}

/// One value as written, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Box<[Part]>,
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = src;
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                text.push('$');
                rest = after;
                continue;
            }
            let (name, after) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let end = inner
                        .find('}')
                        .ok_or_else(|| format!("unclosed `${{` in {src:?}"))?;
                    (&inner[..end], &inner[end + 1..])
                }
                None => {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)))
                        .unwrap_or(rest.len());
                    (&rest[..end], &rest[end..])
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text).into()));
            }
            parts.push(Part::Var(variable(name)?));
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text.into()));
        }
        Ok(Template {
            parts: parts.into(),
        })
    }

    /// The value when it has no variables: then it is prepared once, not per request.
    pub fn fixed(&self) -> Option<&str> {
        match &*self.parts {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The value for this request. Variables without a value (no consumer, no such claim or
    /// header) are empty.
    pub fn render<'a>(&'a self, req: &RequestHeader, cx: &Context) -> Cow<'a, str> {
        if let Some(fixed) = self.fixed() {
            return Cow::Borrowed(fixed);
        }
        let mut out = String::new();
        for part in self.parts.iter() {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => value(v, req, cx, &mut out),
            }
        }
        Cow::Owned(out)
    }

    /// [`Template::render`] as a header value; `None` when it comes out empty or is not a
    /// valid header value (a claim with a newline): such a header is left out.
    pub fn header_value(&self, req: &RequestHeader, cx: &Context) -> Option<HeaderValue> {
        let v = self.render(req, cx);
        if v.is_empty() {
            return None;
        }
        // The rendered buffer becomes the value: checked, not copied again.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(v.into_owned())).ok()
    }
}

fn variable(name: &str) -> Result<Var, String> {
    let (head, arg) = match name.split_once('.') {
        Some((h, a)) => (h, Some(a)),
        None => (name, None),
    };
    let needs = |what: &str| -> Result<&str, String> {
        arg.filter(|a| !a.is_empty())
            .ok_or_else(|| format!("`${head}` needs a {what}: `${head}.<{what}>`"))
    };
    Ok(match (head, arg) {
        ("client_ip", None) => Var::ClientIp,
        ("request_id", None) => Var::RequestId,
        ("consumer", None) => Var::Consumer,
        ("route", None) => Var::Route,
        ("jwt", _) => Var::Jwt(needs("claim")?.into()),
        ("header", _) => {
            let h = needs("name")?;
            Var::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("`{h}` is not a header name"))?,
            )
        }
        ("query", _) => Var::Query(needs("name")?.into()),
        _ => {
            return Err(format!(
                "unknown variable `${name}` (known: $client_ip, $request_id, $consumer, $route, \
                 $jwt.<claim>, $header.<name>, $query.<name>; `$$` is a `$`)"
            ))
        }
    })
}

fn value(var: &Var, req: &RequestHeader, cx: &Context, out: &mut String) {
    match var {
        Var::ClientIp => {
            let _ = write!(out, "{}", cx.peek_client_ip(&req.headers));
        }
        Var::RequestId => out.push_str(cx.request_id.as_str()),
        Var::Consumer => {
            if let Some(c) = &cx.identity.consumer {
                out.push_str(&c.name);
            }
        }
        Var::Route => out.push_str(cx.route_name()),
        Var::Jwt(claim) => {
            let claim = cx.identity.jwt.as_deref().and_then(|c| c.get(&**claim));
            match claim {
                Some(serde_json::Value::String(s)) => out.push_str(s),
                Some(serde_json::Value::Null) | None => {}
                Some(other) => {
                    let _ = write!(out, "{other}");
                }
            }
        }
        Var::Header(name) => {
            if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                out.push_str(v);
            }
        }
        Var::Query(name) => {
            let query = req.uri.query().unwrap_or("").as_bytes();
            if let Some((_, v)) = form_urlencoded::parse(query).find(|(k, _)| k == &**name) {
                out.push_str(&v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{Consumer, Identity};
    use std::sync::Arc;

    #[test]
    fn literal_text_is_fixed() {
        let t = Template::parse("pylon costs $$5").unwrap();
        assert_eq!(t.fixed(), Some("pylon costs $5"));
    }

    #[test]
    fn variables_are_filled_in() {
        let t =
            Template::parse("$consumer/${jwt.sub}-$header.x-team;q=$query.page,$jwt.n").unwrap();
        assert_eq!(t.fixed(), None);
        let mut req = RequestHeader::build("GET", b"/x?page=2&x=1", None).unwrap();
        req.insert_header("x-team", "blue").unwrap();
        let mut cx = Context::default();
        cx.identity = Identity::of(Arc::new(Consumer::new("alice", vec![])));
        let claims = serde_json::json!({"sub": "a@x", "n": 7});
        cx.identity.jwt = Some(Arc::new(claims.as_object().unwrap().clone()));
        assert_eq!(t.render(&req, &cx), "alice/a@x-blue;q=2,7");
    }

    #[test]
    fn missing_values_are_empty_and_empty_headers_left_out() {
        let t = Template::parse("$jwt.sub").unwrap();
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let cx = Context::default();
        assert_eq!(t.render(&req, &cx), "");
        assert_eq!(t.header_value(&req, &cx), None);
    }

    #[test]
    fn unknown_variables_are_errors() {
        for bad in [
            "$nope",
            "${header.}",
            "$jwt",
            "${consumer",
            "${header.bad name}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should be refused");
        }
        let e = Template::parse("x-$user").unwrap_err();
        assert!(e.contains("unknown variable `$user`"), "{e}");
    }
}
