//! Body format conversions: form ⇄ JSON for requests, XML → JSON for responses. Parsing is the
//! crates' (`form_urlencoded`, `quick-xml`); this is only the mapping between the shapes.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::{Map, Value};

/// `a=1&b=x&a=2` → `{"a": ["1", "2"], "b": "x"}`: every value a string, repeated keys an array.
pub fn form_to_json(body: &[u8]) -> Option<Value> {
    std::str::from_utf8(body).ok()?;
    let mut out = Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        let v = Value::String(v.into_owned());
        match out.get_mut(k.as_ref()) {
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
            None => {
                out.insert(k.into_owned(), v);
            }
        }
    }
    Some(Value::Object(out))
}

/// A flat JSON object → `application/x-www-form-urlencoded`: strings, numbers and booleans as
/// they read, `null` empty, arrays of those as repeated keys. Nested objects have no form
/// shape: `None`.
pub fn json_to_form(doc: &Value) -> Option<String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in doc.as_object()? {
        match v {
            Value::Array(items) => {
                for item in items {
                    form.append_pair(k, &scalar(item)?);
                }
            }
            v => {
                form.append_pair(k, &scalar(v)?);
            }
        }
    }
    Some(form.finish())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// One element being read: its attributes and children so far, and its text.
#[derive(Default)]
struct Element {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

impl Element {
    fn open(start: &BytesStart<'_>) -> Option<Element> {
        let mut e = Element {
            name: start.name().into_inner().to_string(),
            ..Element::default()
        };
        for attr in start.attributes() {
            let attr = attr.ok()?;
            let key = format!("@{}", attr.key.into_inner());
            e.fields.insert(
                key,
                Value::String(
                    attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .ok()?
                        .into_owned(),
                ),
            );
        }
        Some(e)
    }

    /// The element as a value: its text alone when it has nothing else, else an object with
    /// the text (if any) under `#text`.
    fn close(mut self) -> (String, Value) {
        let text = self.text.trim();
        let value = if self.fields.is_empty() {
            Value::String(text.to_string())
        } else {
            if !text.is_empty() {
                self.fields
                    .insert("#text".into(), Value::String(text.to_string()));
            }
            Value::Object(self.fields)
        };
        (self.name, value)
    }

    /// Add a child; a name seen before becomes an array, in document order.
    fn add(&mut self, name: String, value: Value) {
        match self.fields.get_mut(&name) {
            Some(Value::Array(list)) => list.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                self.fields.insert(name, value);
            }
        }
    }
}

/// `<user id="7"><name>Al</name><tag>a</tag><tag>b</tag></user>` →
/// `{"user": {"@id": "7", "name": "Al", "tag": ["a", "b"]}}`: attributes under `@name`, text
/// beside children under `#text`, repeated children as arrays, every value a string.
/// `None` for a body that is not well-formed XML with one root element.
pub fn xml_to_json(body: &[u8]) -> Option<Value> {
    let mut reader = Reader::from_str(std::str::from_utf8(body).ok()?);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    loop {
        let event = reader.read_event().ok()?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return None;
                }
                stack.push(Element::open(&start)?);
            }
            Event::Empty(start) => {
                let (name, value) = Element::open(&start)?.close();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, value),
                    None if root.is_none() => root = Some((name, value)),
                    None => return None,
                }
            }
            Event::End(_) => {
                let (name, value) = stack.pop()?.close();
                match stack.last_mut() {
                    Some(parent) => parent.add(name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::Text(t) => match stack.last_mut() {
                Some(e) => e.text.push_str(&t.xml10_content()),
                None if t.trim().is_empty() => {}
                None => return None,
            },
            Event::CData(c) => stack.last_mut()?.text.push_str(&c.xml10_content()),
            Event::GeneralRef(r) => {
                let e = stack.last_mut()?;
                match r.resolve_char_ref().ok()? {
                    Some(c) => e.text.push(c),
                    None => e.text.push_str(quick_xml::escape::resolve_xml_entity(&r)?),
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return None;
    }
    let (name, value) = root?;
    let mut doc = Map::with_capacity(1);
    doc.insert(name, value);
    Some(Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_and_json_both_ways() {
        let doc = form_to_json(b"name=Al+B&tag=a&tag=b&pct=%26").unwrap();
        assert_eq!(doc, json!({"name": "Al B", "tag": ["a", "b"], "pct": "&"}));
        let form = json_to_form(&json!({"n": 1, "ok": true, "tag": ["a", "b"], "s": "a b&"}));
        assert_eq!(form.unwrap(), "n=1&ok=true&tag=a&tag=b&s=a+b%26");
        assert_eq!(json_to_form(&json!({"nested": {"a": 1}})), None);
        assert_eq!(json_to_form(&json!([1])), None);
    }

    #[test]
    fn xml_elements_attributes_and_repeats() {
        let xml = br#"<?xml version="1.0"?>
            <user id="7"><name>Al &amp; B</name><tag>a</tag><tag>b</tag><empty/>
            <note lang="en">hi<![CDATA[ <there>]]></note></user>"#;
        assert_eq!(
            xml_to_json(xml).unwrap(),
            json!({"user": {"@id": "7", "name": "Al & B", "tag": ["a", "b"], "empty": "",
                "note": {"@lang": "en", "#text": "hi <there>"}}})
        );
    }

    #[test]
    fn broken_xml_is_not_converted() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"not xml",
            b"<a/><b/>",
            b"\xff<a/>",
        ] {
            assert_eq!(xml_to_json(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
