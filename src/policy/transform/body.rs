//! Body edits: which bodies they read, the buffer that collects one (decoding it if the
//! sender compressed it), and the edit itself once the body is whole.
//!
//! Only routes whose transform edits bodies buffer them, up to `max_body`. A body the edits
//! cannot read (another content type, a charset other than UTF-8, an encoding Pylon has no
//! decoder for, or not parseable) is passed on as it came, and counted.

use super::format;
use super::json::JsonEdits;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use pingora::protocols::http::compression::{Algorithm, Encode};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    FormToJson,
    JsonToForm,
    XmlToJson,
}

/// What a body must be for the edits to read it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    Json,
    Form,
    Xml,
}

/// Why a body was left as it came: the `reason` label of
/// `pylon_body_transforms_skipped_total`.
pub const SKIPS: [&str; 5] = ["content_type", "charset", "encoding", "invalid", "not_flat"];

pub struct BodyEdits {
    pub json: JsonEdits,
    pub format: Option<Format>,
    pub max_body: usize,
    /// One counter per entry of [`SKIPS`], resolved at load.
    pub skipped: Box<[IntCounter]>,
}

/// A body that is being collected: the decoded bytes so far.
pub struct Buffer {
    data: Vec<u8>,
    decoder: Option<Box<dyn Encode + Send + Sync>>,
    limit: usize,
    /// The bytes as they came (compressed, if they were): bounded by `limit` too.
    raw: usize,
}

/// The body grew beyond `max_body`, or its compression was corrupt.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooLarge,
    Corrupt,
}

impl BodyEdits {
    pub fn is_empty(&self) -> bool {
        self.json.is_empty() && self.format.is_none()
    }

    fn reads(&self) -> Reads {
        match self.format {
            Some(Format::FormToJson) => Reads::Form,
            Some(Format::XmlToJson) => Reads::Xml,
            Some(Format::JsonToForm) | None => Reads::Json,
        }
    }

    /// The content type of an edited body, when it changes.
    pub fn output_type(&self) -> Option<HeaderValue> {
        match self.format? {
            Format::FormToJson | Format::XmlToJson => {
                Some(HeaderValue::from_static("application/json"))
            }
            Format::JsonToForm => Some(HeaderValue::from_static(
                "application/x-www-form-urlencoded",
            )),
        }
    }

    /// Count a body left as it came.
    pub fn skip(&self, reason: &'static str) {
        if let Some(i) = SKIPS.iter().position(|r| *r == reason) {
            self.skipped[i].inc();
        }
    }

    /// A buffer for a body with these headers, or why the edits cannot read it (counted).
    pub fn start(&self, headers: &HeaderMap) -> Option<Buffer> {
        match self.readable(headers) {
            Ok(decoder) => Some(Buffer {
                data: Vec::new(),
                decoder,
                limit: self.max_body,
                raw: 0,
            }),
            Err(reason) => {
                self.skip(reason);
                None
            }
        }
    }

    fn readable(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Box<dyn Encode + Send + Sync>>, &'static str> {
        let ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut params = ct.split(';');
        let mime = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let fits = match self.reads() {
            Reads::Json => mime == "application/json" || mime.ends_with("+json"),
            Reads::Form => mime == "application/x-www-form-urlencoded",
            Reads::Xml => mime == "application/xml" || mime == "text/xml" || mime.ends_with("+xml"),
        };
        if !fits {
            return Err("content_type");
        }
        let utf8 = params
            .filter_map(|p| p.split_once('='))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
            .all(|(_, v)| {
                let v = v.trim().trim_matches('"');
                v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
            });
        if !utf8 {
            return Err("charset");
        }
        match headers.get(CONTENT_ENCODING).map(|v| v.to_str()) {
            None => Ok(None),
            Some(Ok(v)) if v.trim().eq_ignore_ascii_case("identity") => Ok(None),
            Some(Ok(v)) => Algorithm::from(v.trim())
                .decompressor(true)
                .map(Some)
                .ok_or("encoding"),
            Some(Err(_)) => Err("encoding"),
        }
    }

    /// The edited body, or the body as it came (counted) when it does not parse. No body
    /// (a `HEAD` response) stays none, uncounted.
    pub fn finish(&self, body: Vec<u8>) -> Bytes {
        if body.is_empty() {
            return Bytes::new();
        }
        match self.edit(&body) {
            Ok(edited) => edited,
            Err(reason) => {
                self.skip(reason);
                Bytes::from(body)
            }
        }
    }

    fn edit(&self, body: &[u8]) -> Result<Bytes, &'static str> {
        let doc = match self.reads() {
            Reads::Json => serde_json::from_slice(body).map_err(|_| "invalid")?,
            Reads::Form => format::form_to_json(body).ok_or("invalid")?,
            Reads::Xml => format::xml_to_json(body).ok_or("invalid")?,
        };
        let doc = self.json.apply(doc);
        match self.format {
            Some(Format::JsonToForm) => format::json_to_form(&doc)
                .map(Bytes::from)
                .ok_or("not_flat"),
            _ => Ok(Bytes::from(
                serde_json::to_vec(&doc).map_err(|_| "invalid")?,
            )),
        }
    }
}

impl Buffer {
    /// Whether the sender's compression is undone here (the edited body goes out plain).
    pub fn decodes(&self) -> bool {
        self.decoder.is_some()
    }

    /// Add a chunk as it arrived.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Result<(), Refused> {
        self.raw += chunk.len();
        if self.raw > self.limit {
            return Err(Refused::TooLarge);
        }
        match &mut self.decoder {
            Some(d) => {
                let plain = d.encode(chunk, end).map_err(|_| Refused::Corrupt)?;
                self.data.extend_from_slice(&plain);
            }
            None => self.data.extend_from_slice(chunk),
        }
        if self.data.len() > self.limit {
            return Err(Refused::TooLarge);
        }
        Ok(())
    }

    /// The whole (decoded) body.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::super::json::pointer;
    use super::*;
    use std::io::Write;

    fn edits(format: Option<Format>, max_body: usize) -> BodyEdits {
        BodyEdits {
            json: JsonEdits {
                set: vec![(pointer("/ok").unwrap(), serde_json::json!(true))],
                ..JsonEdits::default()
            },
            format,
            max_body,
            skipped: SKIPS
                .iter()
                .map(|r| IntCounter::new(format!("skip_{r}"), "test").unwrap())
                .collect(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn reads_only_what_it_can_edit() {
        let e = edits(None, 100);
        assert!(e
            .start(&headers(&[("content-type", "application/json")]))
            .is_some());
        assert!(e
            .start(&headers(&[(
                "content-type",
                "application/problem+json; charset=UTF-8"
            )]))
            .is_some());
        assert!(e
            .start(&headers(&[("content-type", "text/plain")]))
            .is_none());
        assert!(e
            .start(&headers(&[(
                "content-type",
                "application/json; charset=utf-16"
            )]))
            .is_none());
        assert!(e
            .start(&headers(&[
                ("content-type", "application/json"),
                ("content-encoding", "zstd")
            ]))
            .is_none());
        assert_eq!(e.skipped[0].get(), 1, "content_type");
        assert_eq!(e.skipped[1].get(), 1, "charset");
        assert_eq!(e.skipped[2].get(), 1, "encoding");
    }

    #[test]
    fn decodes_gzip_edits_and_refuses_beyond_the_limit() {
        let e = edits(None, 64);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(br#"{"a":1}"#).unwrap();
        let gz = gz.finish().unwrap();
        let mut buf = e
            .start(&headers(&[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ]))
            .unwrap();
        assert!(buf.decodes());
        let (head, tail) = gz.split_at(5);
        buf.push(head, false).unwrap();
        buf.push(tail, true).unwrap();
        assert_eq!(&e.finish(buf.take())[..], br#"{"a":1,"ok":true}"#);

        let mut buf = e
            .start(&headers(&[("content-type", "application/json")]))
            .unwrap();
        buf.push(&[b' '; 40], false).unwrap();
        assert_eq!(buf.push(&[b' '; 40], true), Err(Refused::TooLarge));
    }

    #[test]
    fn unparseable_bodies_pass_as_they_came() {
        let e = edits(None, 64);
        assert_eq!(&e.finish(b"{not json".to_vec())[..], b"{not json");
        assert_eq!(e.skipped[3].get(), 1, "invalid");
        let to_form = edits(Some(Format::JsonToForm), 64);
        assert_eq!(
            &to_form.finish(br#"{"a":"x y"}"#.to_vec())[..],
            b"a=x+y&ok=true"
        );
        assert_eq!(
            &to_form.finish(br#"{"a":{"b":1}}"#.to_vec())[..],
            br#"{"a":{"b":1}}"#
        );
        assert_eq!(to_form.skipped[4].get(), 1, "not_flat");
    }
}
