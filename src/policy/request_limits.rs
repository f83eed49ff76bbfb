//! `request_limits`: how large a request may be. The header (431), the URI (414) and the body
//! (413: against `content-length` before anything goes upstream, and while a chunked body
//! streams, so no byte beyond the limit is forwarded).
//!
//! A route without a `request_limits` policy (its own or a global one) gets [`defaults`], so
//! limits are on with no configuration at all; a route's own policy replaces the defaults (an
//! upload route may allow a larger body).

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfSize, ConfigError};
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply, Stage};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

pub const KIND: Kind = Kind {
    name: "request_limits",
    parse,
};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimitsConfig {
    /// Every header line's name and value (with `: ` and CRLF), without the request line.
    #[serde(default = "default_header_bytes")]
    pub max_header_bytes: ConfSize,
    #[serde(default = "default_headers")]
    pub max_headers: usize,
    /// The request target as sent: path and query.
    #[serde(default = "default_uri_bytes")]
    pub max_uri_bytes: ConfSize,
    #[serde(default = "default_body")]
    pub max_body: ConfSize,
}

fn default_header_bytes() -> ConfSize {
    ConfSize(32 << 10)
}
fn default_headers() -> usize {
    100
}
fn default_uri_bytes() -> ConfSize {
    ConfSize(8 << 10)
}
fn default_body() -> ConfSize {
    ConfSize(10 << 20)
}

impl Default for RequestLimitsConfig {
    fn default() -> Self {
        RequestLimitsConfig {
            max_header_bytes: default_header_bytes(),
            max_headers: default_headers(),
            max_uri_bytes: default_uri_bytes(),
            max_body: default_body(),
        }
    }
}

struct RequestLimitsSpec {
    config: RequestLimitsConfig,
    filter: Arc<RequestLimits>,
}

impl Spec for RequestLimitsSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

pub struct RequestLimits {
    header_bytes: usize,
    headers: usize,
    uri_bytes: usize,
    body: u64,
}

impl RequestLimits {
    fn new(c: &RequestLimitsConfig) -> RequestLimits {
        RequestLimits {
            header_bytes: c.max_header_bytes.bytes(),
            headers: c.max_headers,
            uri_bytes: c.max_uri_bytes.bytes(),
            body: c.max_body.0,
        }
    }
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: RequestLimitsConfig = src.settings()?;
    let mut errors = Vec::new();
    if config.max_headers == 0 || config.max_header_bytes.0 == 0 || config.max_uri_bytes.0 == 0 {
        errors.push(
            src.place
                .error("`max_headers`, `max_header_bytes` and `max_uri_bytes` must be above zero"),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let filter = Arc::new(RequestLimits::new(&config));
    Ok(Arc::new(RequestLimitsSpec { config, filter }))
}

/// The limits of a route without a `request_limits` policy: 32 KiB and 100 header lines,
/// an 8 KiB URI (nginx's defaults), a 10 MiB body.
pub fn defaults() -> Compiled {
    static DEFAULTS: LazyLock<Arc<RequestLimits>> =
        LazyLock::new(|| Arc::new(RequestLimits::new(&RequestLimitsConfig::default())));
    Compiled::Filter(DEFAULTS.clone())
}

/// The body bytes seen so far.
struct Seen(u64);

fn declared(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[async_trait]
impl Filter for RequestLimits {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::REQUEST_BODY
    }

    /// Before authentication: an oversized request costs no credential check.
    fn stage(&self) -> Stage {
        Stage::BeforeAuth
    }

    async fn request(&self, req: &RequestHeader, _cx: &mut Context) -> Result<(), Reply> {
        let uri = req.raw_path().len();
        if uri > self.uri_bytes {
            return Err(Reply::error(error::URI_TOO_LONG));
        }
        let headers = &req.headers;
        if headers.len() > self.headers {
            return Err(Reply::error(error::REQUEST_HEADER_TOO_LARGE));
        }
        let bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if bytes > self.header_bytes {
            return Err(Reply::error(error::REQUEST_HEADER_TOO_LARGE));
        }
        if declared(req).is_some_and(|n| n > self.body) {
            return Err(Reply::error(error::PAYLOAD_TOO_LARGE));
        }
        Ok(())
    }

    async fn request_body(
        &self,
        chunk: &mut Option<Bytes>,
        _end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(len) = chunk.as_ref().map(|c| c.len() as u64) else {
            return Ok(());
        };
        let total = match cx.state.get_mut::<Seen>() {
            Some(seen) => {
                seen.0 += len;
                seen.0
            }
            None => {
                cx.state.insert(Seen(len));
                len
            }
        };
        if total > self.body {
            // This chunk is not forwarded: the target never gets a byte beyond the limit.
            *chunk = None;
            return Err(Reply::error(error::PAYLOAD_TOO_LARGE));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            header_bytes: 200,
            headers: 5,
            uri_bytes: 50,
            body: 10,
        }
    }

    #[tokio::test]
    async fn header_uri_and_declared_body() {
        let l = limits();
        let mut cx = Context::default();
        let ok = RequestHeader::build("GET", b"/short?q=1", None).unwrap();
        assert!(l.request(&ok, &mut cx).await.is_ok());
        let long =
            RequestHeader::build("GET", format!("/{}", "a".repeat(60)).as_bytes(), None).unwrap();
        assert_eq!(l.request(&long, &mut cx).await.unwrap_err().status, 414);
        let mut many = RequestHeader::build("GET", b"/", None).unwrap();
        for i in 0..6 {
            many.insert_header(format!("x-{i}"), "v").unwrap();
        }
        assert_eq!(l.request(&many, &mut cx).await.unwrap_err().status, 431);
        let mut big = RequestHeader::build("GET", b"/", None).unwrap();
        big.insert_header("x-big", "v".repeat(300)).unwrap();
        assert_eq!(l.request(&big, &mut cx).await.unwrap_err().status, 431);
        let mut body = RequestHeader::build("POST", b"/", None).unwrap();
        body.insert_header("content-length", "11").unwrap();
        assert_eq!(l.request(&body, &mut cx).await.unwrap_err().status, 413);
    }

    #[tokio::test]
    async fn a_streamed_body_is_cut_before_the_limit_is_passed() {
        let l = limits();
        let mut cx = Context::default();
        let mut chunk = Some(Bytes::from_static(b"123456"));
        l.request_body(&mut chunk, false, &mut cx).await.unwrap();
        assert!(chunk.is_some());
        let mut chunk = Some(Bytes::from_static(b"78901"));
        assert_eq!(
            l.request_body(&mut chunk, false, &mut cx)
                .await
                .unwrap_err()
                .status,
            413
        );
        assert!(
            chunk.is_none(),
            "the chunk that passes the limit is not forwarded"
        );
    }
}
