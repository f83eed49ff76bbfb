//! Which JSON request calls which gRPC method: the `google.api.http` rules of the services a
//! policy names, read from a descriptor set, and for every method the default binding
//! `POST /package.Service/Method` with the request message as the body.

use super::template::Template;
use http::{HeaderValue, Method};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor, Value};

/// Where a request's body goes in the request message.
#[derive(Debug, Clone)]
pub enum BodyTo {
    /// No body (`body` unset): fields come from the path and the query.
    Nothing,
    /// `body: "*"`: the whole message.
    Message,
    /// `body: "field"`: one field.
    Field(FieldDescriptor),
}

/// One binding of a method to an HTTP method and a path template.
#[derive(Debug)]
pub struct Rule {
    pub verb: Method,
    pub template: Template,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC call's path.
    pub path: HeaderValue,
    pub body: BodyTo,
    /// `response_body`: the field of the answer that is the whole HTTP body.
    pub response_body: Option<FieldDescriptor>,
}

/// The rules of `services` in the descriptor set `bytes`, or what is wrong with them.
pub fn load(bytes: &[u8], services: &[String]) -> Result<Vec<Rule>, String> {
    let pool = DescriptorPool::decode(bytes)
        .map_err(|e| format!("not a descriptor set (protoc --descriptor_set_out): {e}"))?;
    let http = pool.get_extension_by_name("google.api.http");
    let mut rules = Vec::new();
    for name in services {
        let service = pool.get_service_by_name(name).ok_or_else(|| {
            format!("service `{name}` is not in the descriptor set (was it built with --include_imports?)")
        })?;
        for method in service.methods() {
            if method.is_client_streaming() {
                // A JSON request is one message; client-streaming methods are left to gRPC
                // clients.
                continue;
            }
            let path = format!("/{}/{}", service.full_name(), method.name());
            let path = HeaderValue::from_str(&path).map_err(|e| format!("{path}: {e}"))?;
            let options = method.options();
            if let Some(ext) = http.as_ref().filter(|e| options.has_extension(e)) {
                if let Value::Message(rule) = options.get_extension(ext).as_ref() {
                    let at = || format!("`{}`'s google.api.http", method.full_name());
                    add(&mut rules, rule, &method, &path, true)
                        .map_err(|e| format!("{}: {e}", at()))?;
                }
            }
            rules.push(Rule {
                verb: Method::POST,
                template: Template::parse(path.to_str().unwrap_or_default())?,
                body: BodyTo::Message,
                response_body: None,
                method,
                path,
            });
        }
    }
    Ok(rules)
}

/// One `HttpRule` and, at the top level, its `additional_bindings`.
fn add(
    rules: &mut Vec<Rule>,
    rule: &prost_reflect::DynamicMessage,
    method: &MethodDescriptor,
    path: &HeaderValue,
    top: bool,
) -> Result<(), String> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let verbs = [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ];
    let mut found = verbs
        .into_iter()
        .find_map(|(name, verb)| text(name).map(|t| (verb, t)));
    if found.is_none() {
        if let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref() {
            let kind = match custom.get_field_by_name("kind").as_deref() {
                Some(Value::String(k)) => k.clone(),
                _ => String::new(),
            };
            let custom_path = match custom.get_field_by_name("path").as_deref() {
                Some(Value::String(p)) => p.clone(),
                _ => String::new(),
            };
            let verb = Method::from_bytes(kind.as_bytes())
                .map_err(|_| format!("custom method `{kind}` is not an HTTP method"))?;
            found = Some((verb, custom_path));
        }
    }
    if let Some((verb, pattern)) = found {
        let template = Template::parse(&pattern)?;
        let input = method.input();
        for field in template.fields() {
            field_path(&input, field)?;
        }
        let body =
            match text("body").as_deref() {
                None => BodyTo::Nothing,
                Some("*") => BodyTo::Message,
                Some(name) => BodyTo::Field(input.get_field_by_name(name).ok_or_else(|| {
                    format!("body field `{name}` is not in `{}`", input.full_name())
                })?),
            };
        let response_body = match text("response_body") {
            None => None,
            Some(name) => Some(method.output().get_field_by_name(&name).ok_or_else(|| {
                format!(
                    "response_body field `{name}` is not in `{}`",
                    method.output().full_name()
                )
            })?),
        };
        rules.push(Rule {
            verb,
            template,
            method: method.clone(),
            path: path.clone(),
            body,
            response_body,
        });
    }
    if top {
        if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
            for m in more {
                if let Value::Message(m) = m {
                    add(rules, m, method, path, false)?;
                }
            }
        }
    }
    Ok(())
}

/// The fields along `path` (`a.b.c`) from `message`: every one but the last a singular
/// message field.
pub fn field_path(
    message: &prost_reflect::MessageDescriptor,
    path: &str,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("field `{path}` is not in `{}`", message.full_name()))?;
        if names.peek().is_some() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("`{path}`: `{name}` is not a message field")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}
