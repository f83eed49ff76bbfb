//! JSON to a gRPC request message and gRPC answers back to JSON, by the proto3 JSON mapping
//! (prost-reflect's): field names in lowerCamelCase or as declared, 64-bit integers as
//! strings, enums by name, well-known types in their JSON forms.
//!
//! A request message is put together as one JSON object before it is parsed: the body (the
//! whole message, or the field `body` names), then each path variable, then each query
//! parameter (for fields neither the path nor the body set), converted by the field's type.
//! So one parser judges it all, and a bad value is named as the client wrote it.

use super::rules::{field_path, BodyTo, Rule};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, SerializeOptions};
use serde_json::{Map, Value};

/// Why a request cannot be made into the method's message (a `400` for the client).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

/// The request message for `rule`, length-prefixed as one gRPC message.
pub fn request(
    rule: &Rule,
    vars: &[(&str, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, Invalid> {
    let input = rule.method.input();
    let parsed = || -> Result<Value, Invalid> {
        serde_json::from_slice(body).map_err(|e| Invalid(format!("the body is not JSON: {e}")))
    };
    let mut root = match (&rule.body, body.is_empty()) {
        (BodyTo::Message, false) => parsed()?,
        (BodyTo::Field(field), false) => {
            let mut top = Map::new();
            top.insert(field.name().to_string(), parsed()?);
            Value::Object(top)
        }
        _ => Value::Object(Map::new()),
    };
    if !root.is_object() {
        return Err(Invalid("the body must be a JSON object".into()));
    }
    for (path, value) in vars {
        let fields = field_path(&input, path).map_err(Invalid)?;
        let Some(last) = fields.last() else {
            return Err(Invalid(format!("`{path}` names no field")));
        };
        set(&mut root, &fields, scalar(last, value)?, false);
    }
    if let (Some(query), false) = (query, matches!(rule.body, BodyTo::Message)) {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let fields = field_path(&input, &name)
                .map_err(|_| Invalid(format!("unknown query parameter `{name}`")))?;
            let bound_by_path = vars.iter().any(|(p, _)| *p == name);
            let in_body = matches!(&rule.body, BodyTo::Field(f) if *f == fields[0]);
            if bound_by_path || in_body {
                continue;
            }
            let Some(last) = fields.last() else {
                return Err(Invalid(format!("`{name}` names no field")));
            };
            if last.is_map() {
                return Err(Invalid(format!(
                    "`{name}`: a map cannot be set from the query"
                )));
            }
            set(&mut root, &fields, scalar(last, &value)?, last.is_list());
        }
    }
    let message = DynamicMessage::deserialize(input, root).map_err(|e| {
        Invalid(format!(
            "the request does not fit the method's message: {e}"
        ))
    })?;
    Ok(frame(&message.encode_to_vec()))
}

/// A string from a path or a query as the JSON value its field's type takes.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, Invalid> {
    Ok(match field.kind() {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                return Err(Invalid(format!(
                    "`{}` takes `true` or `false`, not `{text}`",
                    field.name()
                )))
            }
        },
        // An enum by number; by name otherwise.
        Kind::Enum(_) => match text.parse::<i32>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text.to_string()),
        },
        // Numbers as strings, which the proto3 JSON mapping accepts for every numeric type;
        // strings, bytes (base64) and well-known types (a timestamp, a wrapper) as they are.
        _ => Value::String(text.to_string()),
    })
}

/// Put `value` at `fields` in `root`, replacing what the body set there (under either of the
/// field's names), or appending to a repeated field's list.
fn set(root: &mut Value, fields: &[FieldDescriptor], value: Value, append: bool) {
    let mut at = root;
    for (i, field) in fields.iter().enumerate() {
        let Value::Object(object) = at else {
            return;
        };
        let existing = object
            .remove(field.name())
            .or_else(|| object.remove(field.json_name()));
        let slot = object.entry(field.name()).or_insert(Value::Null);
        if i + 1 == fields.len() {
            *slot = match (append, existing) {
                (true, Some(Value::Array(mut list))) => {
                    list.push(value);
                    Value::Array(list)
                }
                (true, _) => Value::Array(vec![value]),
                (false, _) => value,
            };
            return;
        }
        *slot = match existing {
            Some(v @ Value::Object(_)) => v,
            _ => Value::Object(Map::new()),
        };
        at = slot;
    }
}

/// `message` as one length-prefixed, uncompressed gRPC message.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Why an answer cannot be read (a `502` for the client).
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable(pub &'static str);

/// The messages of an answer's body, each as JSON (only its `response_body` field, if the
/// rule names one).
pub fn answer(rule: &Rule, mut body: &[u8]) -> Result<Vec<Value>, Unreadable> {
    let output = rule.method.output();
    let options = SerializeOptions::new();
    let mut messages = Vec::new();
    while !body.is_empty() {
        let (head, rest) = body
            .split_at_checked(5)
            .ok_or(Unreadable("a message is cut short"))?;
        if head[0] & 1 == 1 {
            // Nothing asked for compression (no `grpc-accept-encoding` is sent).
            return Err(Unreadable("a compressed message"));
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let (bytes, rest) = rest
            .split_at_checked(len)
            .ok_or(Unreadable("a message is cut short"))?;
        let message = DynamicMessage::decode(output.clone(), bytes)
            .map_err(|_| Unreadable("a message does not fit the method's answer"))?;
        let mut json = message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|_| Unreadable("a message cannot be written as JSON"))?;
        if let (Some(field), Value::Object(object)) = (&rule.response_body, &mut json) {
            json = object.remove(field.json_name()).unwrap_or(Value::Null);
        }
        messages.push(json);
        body = rest;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::super::template::Template;
    use super::*;
    use http::{HeaderValue, Method};
    use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
    use prost_reflect::prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
    };
    use prost_reflect::DescriptorPool;
    use serde_json::json;

    fn field(
        name: &str,
        number: i32,
        kind: Type,
        label: Label,
        type_name: &str,
    ) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(kind as i32),
            label: Some(label as i32),
            type_name: (!type_name.is_empty()).then(|| type_name.into()),
            json_name: Some(
                name.split('_')
                    .enumerate()
                    .map(|(i, w)| match i {
                        0 => w.to_string(),
                        _ => w[..1].to_uppercase() + &w[1..],
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// `t.S/Get(t.Req) returns (t.Req)`, `Req` with one field of each kind the mapping treats
    /// apart.
    fn rule(template: &str, body: &str) -> Rule {
        let one = Label::Optional;
        let req = DescriptorProto {
            name: Some("Req".into()),
            field: vec![
                field("shelf", 1, Type::String, one, ""),
                field("id", 2, Type::Int64, one, ""),
                field("tags", 3, Type::String, Label::Repeated, ""),
                field("kind", 4, Type::Enum, one, ".t.Kind"),
                field("dims", 5, Type::Message, one, ".t.Dims"),
                field("fragile", 6, Type::Bool, one, ""),
                field("book_title", 7, Type::String, one, ""),
            ],
            ..Default::default()
        };
        let dims = DescriptorProto {
            name: Some("Dims".into()),
            field: vec![field("width", 1, Type::Int32, one, "")],
            ..Default::default()
        };
        let kind = EnumDescriptorProto {
            name: Some("Kind".into()),
            value: ["K0", "BOOK"]
                .iter()
                .enumerate()
                .map(|(i, n)| EnumValueDescriptorProto {
                    name: Some(n.to_string()),
                    number: Some(i as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("t.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            message_type: vec![req, dims],
            enum_type: vec![kind],
            service: vec![ServiceDescriptorProto {
                name: Some("S".into()),
                method: vec![MethodDescriptorProto {
                    name: Some("Get".into()),
                    input_type: Some(".t.Req".into()),
                    output_type: Some(".t.Req".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
            .unwrap();
        let method = pool
            .get_service_by_name("t.S")
            .unwrap()
            .methods()
            .next()
            .unwrap();
        let input = method.input();
        Rule {
            verb: Method::GET,
            template: Template::parse(template).unwrap(),
            path: HeaderValue::from_static("/t.S/Get"),
            body: match body {
                "" => BodyTo::Nothing,
                "*" => BodyTo::Message,
                f => BodyTo::Field(input.get_field_by_name(f).unwrap()),
            },
            response_body: None,
            method,
        }
    }

    /// The message `request` framed, back as JSON.
    fn sent(
        rule: &Rule,
        vars: &[(&str, &str)],
        query: Option<&str>,
        body: &str,
    ) -> Result<Value, Invalid> {
        let vars: Vec<(&str, String)> = vars.iter().map(|(f, v)| (*f, v.to_string())).collect();
        let framed = request(rule, &vars, query, body.as_bytes())?;
        let messages = answer(rule, &framed).unwrap();
        Ok(messages.into_iter().next().unwrap())
    }

    #[test]
    fn path_and_query_values_take_their_fields_types() {
        let r = rule("/v1/{shelf}/{id}", "");
        let got = sent(
            &r,
            &[("shelf", "s 1"), ("id", "42")],
            Some("tags=a&tags=b&kind=BOOK&dims.width=3&fragile=true&bookTitle=x"),
            "",
        );
        assert_eq!(
            got,
            Ok(
                json!({"shelf": "s 1", "id": "42", "tags": ["a", "b"], "kind": "BOOK",
                      "dims": {"width": 3}, "fragile": true, "bookTitle": "x"})
            )
        );
        // An enum by number.
        assert_eq!(sent(&r, &[], Some("kind=1"), "").unwrap()["kind"], "BOOK");
    }

    #[test]
    fn the_path_wins_over_the_body_under_either_name() {
        let r = rule("/v1/{book_title}", "*");
        let got = sent(
            &r,
            &[("book_title", "from path")],
            None,
            r#"{"bookTitle":"from body","id":"5"}"#,
        );
        assert_eq!(got, Ok(json!({"id": "5", "bookTitle": "from path"})));
        // With `body: "*"` the query is not read.
        assert_eq!(sent(&r, &[], Some("nope=1"), "{}"), Ok(json!({})));
    }

    #[test]
    fn a_body_field_is_that_field() {
        let r = rule("/v1/{shelf}", "dims");
        let got = sent(
            &r,
            &[("shelf", "s")],
            Some("dims.width=9&id=3"),
            r#"{"width":2}"#,
        );
        // The query does not reach into the body's field.
        assert_eq!(
            got,
            Ok(json!({"shelf": "s", "id": "3", "dims": {"width": 2}}))
        );
    }

    #[test]
    fn what_does_not_fit_is_invalid() {
        let r = rule("/v1/{shelf}/{id}", "");
        let bad = |vars: &[(&str, &str)], query: &str| sent(&r, vars, Some(query), "").is_err();
        assert!(bad(&[("id", "x")], ""));
        assert!(bad(&[], "colour=red"));
        assert!(bad(&[], "fragile=yes"));
        assert!(bad(&[], "kind=NOPE"));
        let star = rule("/v1", "*");
        assert!(sent(&star, &[], None, "[1]").is_err());
        assert!(sent(&star, &[], None, "{\"colour\":1}").is_err());
        assert!(sent(&star, &[], None, "{").is_err());
    }

    #[test]
    fn answers_are_read_frame_by_frame() {
        let r = rule("/v1", "*");
        let framed = request(&r, &[], None, br#"{"shelf":"a"}"#).unwrap();
        let two = [framed.clone(), framed.clone()].concat();
        assert_eq!(answer(&r, &two).unwrap().len(), 2);
        assert_eq!(answer(&r, b""), Ok(vec![]));
        assert!(answer(&r, &framed[..framed.len() - 1]).is_err());
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert!(answer(&r, &compressed).is_err());
    }
}
