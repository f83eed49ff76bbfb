//! `grpc_transcode`: JSON over HTTP in front of a gRPC service.
//!
//! The services' methods and messages come from a descriptor set (`protoc --include_imports
//! --descriptor_set_out`), read at load. A request is bound to a method by the method's
//! `google.api.http` rules (`rules.rs`: path templates, `body`, `response_body`, additional
//! bindings), or by the default binding every method has, `POST /package.Service/Method` with
//! the request message as the body; path variables and query parameters fill the other fields
//! (`message.rs`). The gateway then makes the call itself to the route's upstream (HTTP/2), with
//! what a proxied request gets: selection, breakers, retries where safe, the route's deadline
//! as `grpc-timeout`, the route's upstream-request filters.
//!
//! The answer is read whole before anything is sent, so the HTTP status tells the call's
//! outcome: `200` with the message as JSON (a server stream's messages as one JSON array), or
//! the contract's JSON error with the status mapped from `grpc-status` (google/rpc/code.proto:
//! `NOT_FOUND` 404, `INVALID_ARGUMENT` 400, `UNAVAILABLE` 503, ...) and the target's
//! `grpc-message` as the message. Never `200` for a call that failed, at the price of holding a
//! stream until it ends (bounded by `max_body` and the route's `timeout`).
//!
//! gRPC and gRPC-Web requests on the route (`application/grpc*`) pass to the upstream as they
//! are; a JSON request that matches no binding is answered `404`.

mod message;
mod rules;
mod template;

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfSize, ConfigError};
use crate::error;
use crate::filter::{Body, Context, Exchange, Filter, Phases, Reply};
use crate::grpc::{self, Code, GRPC_MESSAGE};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, TE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};
use message::{Invalid, Unreadable};
use percent_encoding::percent_decode_str;
use pingora::http::RequestHeader;
use rules::Rule;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "grpc_transcode",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscodeConfig {
    /// A descriptor set with its imports (`protoc --include_imports --descriptor_set_out`).
    pub descriptor: PathBuf,
    /// The services offered as JSON, by full name (`orders.v1.Orders`).
    pub services: Vec<String>,
    /// The largest request body, and the largest answer, taken.
    #[serde(default = "default_max_body")]
    pub max_body: ConfSize,
}

fn default_max_body() -> ConfSize {
    ConfSize(4 << 20)
}

struct GrpcTranscodeSpec {
    config: GrpcTranscodeConfig,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: GrpcTranscodeConfig = src.settings()?;
    if config.services.is_empty() {
        return Err(vec![src
            .place
            .error("`services` must name at least one service")]);
    }
    Ok(Arc::new(GrpcTranscodeSpec { config }))
}

impl Spec for GrpcTranscodeSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let path = &self.config.descriptor;
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read descriptor set {}: {e}", path.display()))?;
        let rules = rules::load(&bytes, &self.config.services)
            .map_err(|e| format!("descriptor set {}: {e}", path.display()))?;
        Ok(Compiled::Filter(Arc::new(GrpcTranscode {
            rules: rules.into(),
            max_body: self.config.max_body.bytes(),
        })))
    }
}

pub struct GrpcTranscode {
    rules: Box<[Rule]>,
    max_body: usize,
}

const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl GrpcTranscode {
    /// The first rule for the request's method and path, with its variables' values.
    fn find<'a>(&'a self, req: &'a RequestHeader) -> Option<(&'a Rule, Vec<(&'a str, String)>)> {
        let path = req.uri.path();
        self.rules
            .iter()
            .filter(|r| r.verb == req.method)
            .find_map(|r| Some((r, r.template.matches(path)?)))
    }
}

/// The call's request: the client's headers (as metadata) but those of its own framing, to the
/// method's path, as gRPC.
fn call_request(client: &RequestHeader, rule: &Rule) -> Result<RequestHeader, Reply> {
    let internal = |_| Reply::error(error::INTERNAL);
    let mut req = RequestHeader::build("POST", rule.path.as_bytes(), None).map_err(internal)?;
    for (name, value) in client.headers.iter() {
        let framing = [
            CONTENT_TYPE,
            CONTENT_LENGTH,
            TRANSFER_ENCODING,
            EXPECT,
            TE,
            HOST,
        ];
        if !framing.contains(name) && name.as_str() != "accept-encoding" {
            req.append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
    }
    req.insert_header(CONTENT_TYPE, grpc::CONTENT_TYPE_GRPC)
        .map_err(internal)?;
    req.insert_header(TE, TRAILERS).map_err(internal)?;
    Ok(req)
}

/// A JSON error of the contract's shape with a message of the request's or the target's own.
fn error_reply(status: u16, code: &str, message: &str, cx: &Context) -> Reply {
    Reply {
        status,
        body: Body::Fixed(error::body(status, code, message, cx.request_id.as_str())),
        headers: vec![
            (CONTENT_TYPE, error::JSON),
            (http::header::CACHE_CONTROL, error::NO_STORE),
        ],
    }
}

/// `grpc-message`, percent-decoded, from the trailers or a trailers-only header.
fn grpc_message(header: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<String> {
    let value = trailers
        .and_then(|t| t.get(GRPC_MESSAGE))
        .or_else(|| header.get(GRPC_MESSAGE))?;
    let text = value.to_str().ok()?;
    Some(percent_decode_str(text).decode_utf8_lossy().into_owned())
}

#[async_trait]
impl Filter for GrpcTranscode {
    fn phases(&self) -> Phases {
        Phases::SERVE
    }

    async fn serve(
        &self,
        req: &RequestHeader,
        exchange: &mut dyn Exchange,
        cx: &mut Context,
    ) -> Option<Reply> {
        let content_type = req.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
        if content_type.is_some_and(|t| t.starts_with(b"application/grpc")) {
            return None;
        }
        let Some((rule, vars)) = self.find(req) else {
            return Some(Reply::error(error::ROUTE_NOT_FOUND));
        };
        let body = match exchange.body(self.max_body).await {
            Ok(body) => body,
            Err(reply) => return Some(reply),
        };
        let message = match message::request(rule, &vars, req.uri.query(), &body) {
            Ok(m) => m,
            Err(Invalid(why)) => return Some(error_reply(400, "bad_request", &why, cx)),
        };
        let call = match call_request(req, rule) {
            Ok(call) => call,
            Err(reply) => return Some(reply),
        };
        let answer = match exchange.grpc_call(call, message, self.max_body, cx).await {
            Ok(answer) => answer,
            Err(reply) => return Some(reply),
        };
        let headers = &answer.header.headers;
        let trailers = answer.trailers.as_ref();
        let seen = trailers
            .and_then(Code::of_headers)
            .or_else(|| Code::of_headers(headers));
        let code = Code::of_call(seen, answer.header.status.as_u16());
        cx.grpc_status = Some(code);
        if code != Code::OK {
            let message = grpc_message(headers, trailers).unwrap_or_default();
            let name = code.name().to_ascii_lowercase();
            return Some(error_reply(code.http_status(), &name, &message, cx));
        }
        let json = match message::answer(rule, &answer.body) {
            Ok(messages) if rule.method.is_server_streaming() => serde_json::Value::Array(messages),
            Ok(mut messages) if messages.len() == 1 => messages.remove(0),
            Ok(_) => return Some(Reply::error(error::BAD_GATEWAY)),
            Err(Unreadable(why)) => {
                log::warn!(
                    "grpc_transcode: {}: {why}",
                    rule.path.to_str().unwrap_or("")
                );
                return Some(Reply::error(error::BAD_GATEWAY));
            }
        };
        Some(Reply {
            status: 200,
            body: Body::Composed(Bytes::from(json.to_string())),
            headers: vec![(CONTENT_TYPE, JSON)],
        })
    }
}
