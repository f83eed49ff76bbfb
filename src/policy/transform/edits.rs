//! Header and query-parameter edits, compiled at load: names parsed, values as templates.
//! Applied in this order: `remove`, `rename`, `set` (replaces), `add` (appends). Values are
//! rendered against the request as it reached the policy, before any of its edits.

use super::template::Template;
use crate::filter::Context;
use http::header::MaxSizeReached;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// A header's value to set or add, prepared once when it has no variables.
pub struct Value {
    template: Template,
    fixed: Option<HeaderValue>,
}

impl Value {
    pub fn new(template: Template) -> Result<Value, String> {
        // An empty value removes the header, like a variable that comes out empty.
        let fixed = match template.fixed() {
            Some(text) if !text.is_empty() => Some(
                HeaderValue::from_str(text)
                    .map_err(|_| format!("{text:?} is not a valid header value"))?,
            ),
            _ => None,
        };
        Ok(Value { template, fixed })
    }

    fn get(&self, req: &RequestHeader, cx: &Context) -> Option<HeaderValue> {
        match &self.fixed {
            Some(v) => Some(v.clone()),
            None => self.template.header_value(req, cx),
        }
    }
}

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

    /// The most headers [`HeaderEdits::apply`] adds.
    pub fn adds(&self) -> usize {
        self.rename.len() + self.set.len() + self.add.len()
    }

    /// Edit the header map `h` with the values [`HeaderEdits::values`] rendered.
    pub fn apply(&self, h: &mut HeaderMap, values: Rendered) -> Result<(), MaxSizeReached> {
        for name in self.remove.iter() {
            h.remove(name);
        }
        for (from, to) in self.rename.iter() {
            let moved: Vec<HeaderValue> = h.get_all(from).iter().cloned().collect();
            if moved.is_empty() {
                continue;
            }
            h.remove(from);
            h.remove(to);
            for v in moved {
                h.try_append(to.clone(), v)?;
            }
        }
        let mut rendered = values.0.map(Vec::into_iter);
        let mut next = |v: &Value| match &mut rendered {
            Some(values) => values.next().flatten(),
            None => v.fixed.clone(),
        };
        for (name, v) in self.set.iter() {
            match next(v) {
                Some(value) => drop(h.try_insert(name.clone(), value)?),
                None => drop(h.remove(name)),
            }
        }
        for (name, v) in self.add.iter() {
            if let Some(value) = next(v) {
                h.try_append(name.clone(), value)?;
            }
        }
        Ok(())
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

    fn value(s: &str) -> Value {
        Value::new(Template::parse(s).unwrap()).unwrap()
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
                (HeaderName::from_static("x-source"), value("pylon")),
                (HeaderName::from_static("x-from"), value("$header.x-old")),
            ]
            .into(),
            add: vec![(HeaderName::from_static("x-tag"), value("b"))].into(),
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-internal", "secret").unwrap();
        req.append_header("x-old", "1").unwrap();
        req.append_header("x-old", "2").unwrap();
        req.insert_header("x-source", "client").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        let values = edits.values(&req, &Context::default());
        crate::headers::edit_request(&mut req, edits.adds(), |h| edits.apply(h, values)).unwrap();
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
