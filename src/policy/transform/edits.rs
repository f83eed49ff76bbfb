//! Header and query-parameter edits, compiled at load: names parsed, values as templates.
//! Applied in this order: `remove`, `rename`, `set` (replaces), `add` (appends). Values are
//! rendered against the request as it reached the policy, before any of its edits.

use super::template::Template;
use crate::filter::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{IntoCaseHeaderName, RequestHeader, ResponseHeader};

/// A header to set or add: its name as it goes on the wire (as written in the file, so no copy
/// per request), and its value, prepared once when it has no variables.
pub struct Value {
    wire: Bytes,
    template: Template,
    fixed: Option<HeaderValue>,
}

impl Value {
    pub fn new(name: &str, template: Template) -> Result<Value, String> {
        // An empty value removes the header, like a variable that comes out empty.
        let fixed = match template.fixed() {
            Some(text) if !text.is_empty() => Some(
                HeaderValue::from_str(text)
                    .map_err(|_| format!("{text:?} is not a valid header value"))?,
            ),
            _ => None,
        };
        Ok(Value {
            wire: Bytes::copy_from_slice(name.as_bytes()),
            template,
            fixed,
        })
    }

    fn get(&self, req: &RequestHeader, cx: &Context) -> Option<HeaderValue> {
        match &self.fixed {
            Some(v) => Some(v.clone()),
            None => self.template.header_value(req, cx),
        }
    }
}

/// The header maps edits apply to: Pingora's request and response headers, which keep the
/// header's case beside the map, so edits go through their own methods.
pub trait Headers {
    fn map(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: impl IntoCaseHeaderName, value: HeaderValue);
    fn append(&mut self, name: impl IntoCaseHeaderName, value: HeaderValue);
}

macro_rules! headers_for {
    ($t:ty) => {
        impl Headers for $t {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: impl IntoCaseHeaderName, value: HeaderValue) {
                // Names and values were checked when they were built.
                let _ = self.insert_header(name, value);
            }
            fn append(&mut self, name: impl IntoCaseHeaderName, value: HeaderValue) {
                let _ = self.append_header(name, value);
            }
        }
    };
}
headers_for!(RequestHeader);
headers_for!(ResponseHeader);

#[derive(Default)]
pub struct HeaderEdits {
    pub remove: Box<[HeaderName]>,
    pub rename: Box<[(HeaderName, HeaderName)]>,
    pub set: Box<[(HeaderName, Value)]>,
    pub add: Box<[(HeaderName, Value)]>,
}

/// The values of `set` then `add` rendered for one request; `None` when none has variables
/// (then the prepared values are used, and nothing is rendered or collected).
pub struct Rendered(Option<Vec<Option<HeaderValue>>>);

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Edit `target` with the values [`HeaderEdits::values`] rendered.
    pub fn apply(&self, target: &mut impl Headers, values: Rendered) {
        for name in self.remove.iter() {
            target.remove(name);
        }
        for (from, to) in self.rename.iter() {
            let moved: Vec<HeaderValue> = target.map().get_all(from).iter().cloned().collect();
            if moved.is_empty() {
                continue;
            }
            target.remove(from);
            target.remove(to);
            for v in moved {
                target.append(to.clone(), v);
            }
        }
        let mut rendered = values.0.map(Vec::into_iter);
        let mut next = |v: &Value| match &mut rendered {
            Some(values) => values.next().flatten(),
            None => v.fixed.clone(),
        };
        for (name, v) in self.set.iter() {
            match next(v) {
                Some(value) => target.insert(v.wire.clone(), value),
                None => target.remove(name),
            }
        }
        for (_, v) in self.add.iter() {
            if let Some(value) = next(v) {
                target.append(v.wire.clone(), value);
            }
        }
    }

    /// The values of `set` then `add` for this request, rendered before anything is edited.
    pub fn values(&self, req: &RequestHeader, cx: &Context) -> Rendered {
        let mut all = self.set.iter().chain(self.add.iter());
        if all.clone().all(|(_, v)| v.fixed.is_some()) {
            return Rendered(None);
        }
        Rendered(Some(all.by_ref().map(|(_, v)| v.get(req, cx)).collect()))
    }
}

/// Query-parameter edits of the upstream request.
#[derive(Default)]
pub struct QueryEdits {
    pub remove: Box<[String]>,
    pub rename: Box<[(String, String)]>,
    pub set: Box<[(String, Template)]>,
    pub add: Box<[(String, Template)]>,
}

impl QueryEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Rewrite the query of `req`'s URI. An empty rendered value still sets the parameter
    /// (`?debug=`): presence can matter to the target.
    pub fn apply(&self, req: &mut RequestHeader, cx: &Context) -> pingora::Result<()> {
        let set: Vec<String> = self
            .set
            .iter()
            .chain(self.add.iter())
            .map(|(_, t)| t.render(req, cx).into_owned())
            .collect();
        let query = req.uri.query().unwrap_or("");
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .filter(|(k, _)| !self.remove.contains(k))
            .collect();
        for (from, to) in self.rename.iter() {
            if pairs.iter().any(|(k, _)| k == from) {
                pairs.retain(|(k, _)| k != to);
                pairs
                    .iter_mut()
                    .filter(|(k, _)| k == from)
                    .for_each(|(k, _)| k.clone_from(to));
            }
        }
        let mut values = set.into_iter();
        for (name, _) in self.set.iter() {
            let v = values.next().unwrap_or_default();
            match pairs.iter().position(|(k, _)| k == name) {
                Some(i) => {
                    pairs[i].1 = v;
                    let mut n = 0;
                    pairs.retain(|(k, _)| {
                        n += usize::from(k == name);
                        k != name || n == 1
                    });
                }
                None => pairs.push((name.clone(), v)),
            }
        }
        for (name, _) in self.add.iter() {
            pairs.push((name.clone(), values.next().unwrap_or_default()));
        }
        let mut uri = req.uri.path().to_string();
        if !pairs.is_empty() {
            uri.push('?');
            let start = uri.len();
            let mut form = form_urlencoded::Serializer::for_suffix(uri, start);
            form.extend_pairs(&pairs);
            uri = form.finish();
        }
        let uri = http::Uri::try_from(uri).map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InternalError, "query rewrite", e)
        })?;
        req.set_uri(uri);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, s: &str) -> Value {
        Value::new(name, Template::parse(s).unwrap()).unwrap()
    }

    #[test]
    fn header_edits_in_order() {
        let edits = HeaderEdits {
            remove: vec![HeaderName::from_static("x-internal")].into(),
            rename: vec![(
                HeaderName::from_static("x-old"),
                HeaderName::from_static("x-new"),
            )]
            .into(),
            set: vec![
                (
                    HeaderName::from_static("x-source"),
                    value("x-source", "pylon"),
                ),
                (
                    HeaderName::from_static("x-from"),
                    value("X-From", "$header.x-old"),
                ),
            ]
            .into(),
            add: vec![(HeaderName::from_static("x-tag"), value("x-tag", "b"))].into(),
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-internal", "secret").unwrap();
        req.append_header("x-old", "1").unwrap();
        req.append_header("x-old", "2").unwrap();
        req.insert_header("x-source", "client").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        let values = edits.values(&req, &Context::default());
        edits.apply(&mut req, values);
        let all = |n: &str| -> Vec<&str> {
            req.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert!(all("x-internal").is_empty());
        assert!(all("x-old").is_empty());
        assert_eq!(all("x-new"), ["1", "2"]);
        assert_eq!(all("x-source"), ["pylon"]);
        assert_eq!(all("x-from"), ["1"], "rendered before the rename");
        assert_eq!(all("x-tag"), ["a", "b"]);
    }

    #[test]
    fn query_edits_in_order() {
        let t = |s: &str| Template::parse(s).unwrap();
        let edits = QueryEdits {
            remove: vec!["debug".to_string()].into(),
            rename: vec![("p".to_string(), "page".to_string())].into(),
            set: vec![
                ("limit".to_string(), t("10")),
                ("who".to_string(), t("$query.u")),
            ]
            .into(),
            add: vec![("tag".to_string(), t("a b"))].into(),
        };
        let mut req =
            RequestHeader::build("GET", b"/list?debug=1&p=2&limit=5&limit=6&u=al", None).unwrap();
        edits.apply(&mut req, &Context::default()).unwrap();
        assert_eq!(
            req.uri.to_string(),
            "/list?page=2&limit=10&u=al&who=al&tag=a+b"
        );
    }
}
