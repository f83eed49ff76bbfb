//! `compression`: gzip, brotli or zstd for clients that accept it, on the routes that name it.
//!
//! The encoders are Pingora's (its response compression module's `Algorithm::compressor`),
//! but for brotli (see [`Brotli`]).
//! Pylon does not install that module for every response: it ran on each one, compressing or
//! not, and it ignores `q`-values. This filter negotiates itself (RFC 9110 `Accept-Encoding`
//! with `q`, ties broken by the policy's `algorithms` order) and only on its own routes, so a
//! route without it pays nothing. It runs after the route's other filters, so it compresses the
//! body as they left it; it never compresses twice, skips bodies below `min_size` and types
//! outside `content_types`, and sets `Vary: Accept-Encoding` on every response it could have
//! compressed.

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfSize, ConfigError};
use crate::filter::{Context, Filter, Phases, Stage};
use crate::plumbing;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::compression::{Algorithm, Encode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "compression",
    parse,
};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Preference among what the client accepts equally: `zstd`, `br`, `gzip`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_min_size")]
    pub min_size: ConfSize,
    /// `type/subtype` or `type/*`.
    #[serde(default = "default_types")]
    pub content_types: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    ["zstd", "br", "gzip"].map(String::from).to_vec()
}

fn default_min_size() -> ConfSize {
    ConfSize(1024)
}

fn default_types() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/problem+json",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

/// The level each encoder runs at: fast settings that still compress text well (brotli's top
/// levels cost far more than they save on a proxy).
fn level(algorithm: Algorithm) -> u32 {
    match algorithm {
        Algorithm::Brotli => 4,
        Algorithm::Zstd => 3,
        _ => 6,
    }
}

struct CompressionSpec {
    config: CompressionConfig,
    filter: Arc<Compression>,
}

impl Spec for CompressionSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

pub struct Compression {
    algorithms: Box<[Algorithm]>,
    min_size: u64,
    /// Lowercase `type/subtype`, or `type/` for `type/*`.
    types: Box<[String]>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: CompressionConfig = src.settings()?;
    let mut errors = Vec::new();
    let mut algorithms = Vec::new();
    for name in &config.algorithms {
        match Algorithm::from(name.as_str()) {
            a @ (Algorithm::Gzip | Algorithm::Brotli | Algorithm::Zstd) => {
                if !algorithms.contains(&a) {
                    algorithms.push(a);
                }
            }
            _ => errors.push(src.place.error(format!(
                "unknown algorithm {name:?} (known: \"zstd\", \"br\", \"gzip\")"
            ))),
        }
    }
    if config.algorithms.is_empty() {
        errors.push(src.place.error("`algorithms` is empty"));
    }
    let mut types = Vec::new();
    for t in &config.content_types {
        let t = t.trim().to_ascii_lowercase();
        match t.split_once('/') {
            Some((main, "*")) if !main.is_empty() => types.push(format!("{main}/")),
            Some((main, sub)) if !main.is_empty() && !sub.is_empty() => types.push(t),
            _ => errors.push(src.place.error(format!(
                "{t:?} in `content_types` is not `type/subtype` or `type/*`"
            ))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let filter = Arc::new(Compression {
        algorithms: algorithms.into(),
        min_size: config.min_size.0,
        types: types.into(),
    });
    Ok(Arc::new(CompressionSpec { config, filter }))
}

/// This response's encoder.
struct Encoding(Box<dyn Encode + Send + Sync>);

/// Brotli, finished properly. Pingora's brotli encoder flushes at the end of the body but never
/// closes the stream (no last meta-block), which strict decoders refuse as truncated; this one
/// is the same `brotli` crate, closed on the last chunk.
struct Brotli {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    bytes_in: usize,
    bytes_out: usize,
    took: std::time::Duration,
}

impl Brotli {
    fn new(level: u32) -> Brotli {
        Brotli {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            bytes_in: 0,
            bytes_out: 0,
            took: std::time::Duration::ZERO,
        }
    }
}

impl Encode for Brotli {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        use pingora::OrErr;
        use std::io::Write;
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        let start = std::time::Instant::now();
        writer.write_all(input).or_err(
            pingora::ErrorType::InternalError,
            "while compressing with brotli",
        )?;
        let out = match end {
            true => self
                .writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default(),
            false => std::mem::take(writer.get_mut()),
        };
        self.bytes_in += input.len();
        self.bytes_out += out.len();
        self.took += start.elapsed();
        Ok(Bytes::from(out))
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        ("brotli", self.bytes_in, self.bytes_out, self.took)
    }
}

/// The encoder for `algorithm`: Pingora's for gzip and zstd, [`Brotli`] for brotli.
fn encoder(algorithm: Algorithm) -> Option<Box<dyn Encode + Send + Sync>> {
    match algorithm {
        Algorithm::Brotli => Some(Box::new(Brotli::new(level(algorithm)))),
        a => a.compressor(level(a)),
    }
}

impl Compression {
    /// The algorithm for a client's `Accept-Encoding`: the highest `q` among the policy's
    /// algorithms (`*` standing for those it does not name), ties by the policy's order.
    /// `None` without the header: a client that says nothing gets the body as it is.
    fn negotiate(&self, accept: Option<&HeaderValue>) -> Option<Algorithm> {
        let accept = accept?.to_str().ok()?;
        let mut named = [None; 3];
        let mut star = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if coding == "*" {
                star = Some(q);
            } else if let Some(i) = self
                .algorithms
                .iter()
                .position(|a| coding.eq_ignore_ascii_case(a.as_str()))
            {
                named[i] = Some(q);
            }
        }
        let mut best: Option<(Algorithm, f32)> = None;
        for (i, a) in self.algorithms.iter().enumerate() {
            let q = named[i].or(star).unwrap_or(0.0);
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((*a, q));
            }
        }
        best.map(|(a, _)| a)
    }

    /// Whether this response may be compressed at all (for some client).
    fn compressible(&self, resp: &ResponseHeader) -> bool {
        if matches!(resp.status.as_u16(), 204 | 206 | 304) {
            return false;
        }
        let h = &resp.headers;
        let encoded = h
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let no_transform = h.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        });
        if encoded || no_transform {
            return false;
        }
        let small = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n < self.min_size);
        if small {
            return false;
        }
        let mime = h
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        mime.is_some_and(|mime| {
            self.types.iter().any(|t| {
                if t.ends_with('/') {
                    mime.starts_with(t.as_str())
                } else {
                    mime == *t
                }
            })
        })
    }
}

#[async_trait]
impl Filter for Compression {
    fn phases(&self) -> Phases {
        Phases::RESPONSE | Phases::RESPONSE_BODY
    }

    fn stage(&self) -> Stage {
        Stage::Last
    }

    fn response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        if !self.compressible(resp) {
            return Ok(());
        }
        crate::headers::edit_response(resp, 1, |h| plumbing::vary(h, "Accept-Encoding"))?;
        let Some(algorithm) = self.negotiate(req.headers.get(ACCEPT_ENCODING)) else {
            return Ok(());
        };
        if req.method == Method::HEAD {
            return Ok(());
        }
        let Some(encoder) = encoder(algorithm) else {
            return Ok(());
        };
        plumbing::streamed(resp)?;
        resp.insert_header(CONTENT_ENCODING, algorithm.as_str())?;
        cx.state.insert(Encoding(encoder));
        Ok(())
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> pingora::Result<()> {
        let Some(Encoding(encoder)) = cx.state.get_mut() else {
            return Ok(());
        };
        let input = body.as_deref().unwrap_or(&[]);
        let out = encoder.encode(input, end)?;
        *body = (!out.is_empty()).then_some(out);
        if end {
            cx.state.remove::<Encoding>();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Compression {
        Compression {
            algorithms: vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip].into(),
            min_size: 100,
            types: vec!["application/json".to_string(), "text/".to_string()].into(),
        }
    }

    #[test]
    fn negotiation_honours_q_then_the_policy_order() {
        let p = policy();
        let n = |s: &'static str| p.negotiate(Some(&HeaderValue::from_static(s)));
        assert_eq!(n("gzip"), Some(Algorithm::Gzip));
        assert_eq!(
            n("gzip, br, zstd"),
            Some(Algorithm::Zstd),
            "a tie: the policy's order"
        );
        assert_eq!(n("gzip;q=1, br;q=0.5, zstd;q=0.1"), Some(Algorithm::Gzip));
        assert_eq!(n("br;q=0.9, *;q=0.2"), Some(Algorithm::Brotli));
        assert_eq!(n("*"), Some(Algorithm::Zstd));
        assert_eq!(n("zstd;q=0, *"), Some(Algorithm::Brotli));
        assert_eq!(n("identity, deflate"), None);
        assert_eq!(n("gzip;q=0"), None);
        assert_eq!(p.negotiate(None), None);
    }

    #[test]
    fn only_what_is_worth_it() {
        let p = policy();
        let resp = |headers: &[(&str, &str)]| {
            let mut r = ResponseHeader::build(200, None).unwrap();
            for (k, v) in headers {
                r.insert_header(k.to_string(), *v).unwrap();
            }
            r
        };
        assert!(p.compressible(&resp(&[("content-type", "application/json")])));
        assert!(p.compressible(&resp(&[
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "500")
        ])));
        assert!(!p.compressible(&resp(&[
            ("content-type", "text/html"),
            ("content-length", "99")
        ])));
        assert!(!p.compressible(&resp(&[("content-type", "image/png")])));
        assert!(!p.compressible(&resp(&[
            ("content-type", "text/plain"),
            ("content-encoding", "gzip")
        ])));
        assert!(!p.compressible(&resp(&[
            ("content-type", "text/plain"),
            ("cache-control", "public, no-transform")
        ])));
        assert!(!p.compressible(&resp(&[])));
    }
}
