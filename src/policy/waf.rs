//! `waf`: SQL-injection and XSS detection on the request, with libinjection (`libinjectionrs`,
//! a pure-Rust port: its fingerprint tables, not patterns of our own).
//!
//! What it reads, as `inspect` says: the path, each query parameter, the chosen headers, each
//! cookie, and a bounded JSON or form body (every string and key, every field). Each value is
//! URL-decoded (twice when the first pass leaves escapes, against double encoding) and, when it
//! has entities, HTML-decoded as well, and each form is checked. `mode = "block"` answers
//! `403 request_blocked`; `"detect"` lets the request through. Both count every finding in
//! `pylon_blocked_requests_total{route,policy,reason}` (`sqli`, `xss`) and log where it was
//! (never the value). `exclude_rules` turn findings off for false positives, by detector and
//! place: `"sqli"`, `"xss:query:q"`, `"*:cookie:session"`, `"sqli:body:description"`.
//!
//! `engine = "crs"` (the OWASP Core Rule Set) is not built yet and is refused at load.

use super::registry::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::{ConfSize, ConfigError};
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply, Stage};
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

pub const KIND: Kind = Kind { name: "waf", parse };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Block,
    Detect,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "default_engine")]
    pub engine: String,
    /// CRS only.
    pub paranoia_level: Option<u8>,
    /// CRS only.
    pub anomaly_threshold: Option<u32>,
    #[serde(default = "default_inspect")]
    pub inspect: Vec<String>,
    /// The headers `inspect = ["headers"]` reads.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// The most of a body that is read; a larger one is inspected up to this and the rest
    /// streams through.
    #[serde(default = "default_max_body")]
    pub max_body: ConfSize,
    #[serde(default)]
    pub exclude_rules: Vec<String>,
}

fn default_mode() -> Mode {
    Mode::Block
}
fn default_engine() -> String {
    "libinjection".into()
}
fn default_inspect() -> Vec<String> {
    ["path", "query", "headers", "cookies", "body"]
        .map(String::from)
        .to_vec()
}
fn default_headers() -> Vec<String> {
    ["user-agent", "referer"].map(String::from).to_vec()
}
fn default_max_body() -> ConfSize {
    ConfSize(64 << 10)
}

/// Which detector found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detector {
    Sqli,
    Xss,
}

impl Detector {
    fn as_str(self) -> &'static str {
        match self {
            Detector::Sqli => "sqli",
            Detector::Xss => "xss",
        }
    }
}

/// Where a value came from: the place kind and its name (parameter, header, cookie, field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place<'a> {
    Path,
    Query(&'a str),
    Header(&'a str),
    Cookie(&'a str),
    Body(&'a str),
}

impl Place<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Place::Path => "path",
            Place::Query(_) => "query",
            Place::Header(_) => "header",
            Place::Cookie(_) => "cookie",
            Place::Body(_) => "body",
        }
    }
    fn name(&self) -> &str {
        match self {
            Place::Path => "",
            Place::Query(n) | Place::Header(n) | Place::Cookie(n) | Place::Body(n) => n,
        }
    }
}

/// One `exclude_rules` entry: `detector[:place[:name]]`, `*` for any detector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exclusion {
    detector: Option<Detector>,
    place: Option<String>,
    name: Option<String>,
}

impl Exclusion {
    fn parse(s: &str) -> Result<Exclusion, String> {
        let mut parts = s.splitn(3, ':');
        let detector = match parts.next().unwrap_or("") {
            "sqli" => Some(Detector::Sqli),
            "xss" => Some(Detector::Xss),
            "*" => None,
            other => {
                return Err(format!(
                    "`exclude_rules`: unknown detector {other:?} in {s:?} (sqli, xss or *)"
                ))
            }
        };
        let place = parts.next().map(str::to_string);
        if let Some(p) = &place {
            if !["path", "query", "header", "cookie", "body"].contains(&p.as_str()) {
                return Err(format!("`exclude_rules`: unknown place {p:?} in {s:?} (path, query, header, cookie, body)"));
            }
        }
        let name = parts.next().map(str::to_string);
        Ok(Exclusion {
            detector,
            place,
            name,
        })
    }

    fn covers(&self, detector: Detector, place: &Place<'_>) -> bool {
        self.detector.is_none_or(|d| d == detector)
            && self.place.as_deref().is_none_or(|p| p == place.kind())
            && self
                .name
                .as_deref()
                .is_none_or(|n| n.eq_ignore_ascii_case(place.name()))
    }
}

struct WafSpec {
    config: WafConfig,
    filter: Arc<Waf>,
}

impl Spec for WafSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

pub struct Waf {
    name: Arc<str>,
    mode: Mode,
    path: bool,
    query: bool,
    headers: Box<[HeaderName]>,
    cookies: bool,
    body: bool,
    max_body: usize,
    exclusions: Box<[Exclusion]>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: WafConfig = src.settings()?;
    let mut errors = Vec::new();
    match config.engine.as_str() {
        "libinjection" => {
            if config.paranoia_level.is_some() || config.anomaly_threshold.is_some() {
                errors.push(
                    src.place.error(
                        "`paranoia_level` and `anomaly_threshold` are for `engine = \"crs\"`",
                    ),
                );
            }
        }
        "crs" => errors.push(src.place.error(
            "`engine = \"crs\"` (the OWASP Core Rule Set) is not available in this build yet; \
             use \"libinjection\"",
        )),
        other => errors.push(
            src.place
                .error(format!("unknown engine {other:?} (libinjection or crs)")),
        ),
    }
    for i in &config.inspect {
        if !["path", "query", "headers", "cookies", "body"].contains(&i.as_str()) {
            errors.push(src.place.error(format!(
                "`inspect`: unknown place {i:?} (path, query, headers, cookies, body)"
            )));
        }
    }
    let mut headers = Vec::new();
    for h in &config.headers {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => headers.push(n),
            Err(_) => errors.push(
                src.place
                    .error(format!("{h:?} in `headers` is not a header name")),
            ),
        }
    }
    let mut exclusions = Vec::new();
    for e in &config.exclude_rules {
        match Exclusion::parse(e) {
            Ok(x) => exclusions.push(x),
            Err(msg) => errors.push(src.place.error(msg)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let has = |what: &str| config.inspect.iter().any(|i| i == what);
    let filter = Arc::new(Waf {
        name: src.place.name.as_str().into(),
        mode: config.mode,
        path: has("path"),
        query: has("query"),
        headers: if has("headers") {
            headers.into()
        } else {
            Box::new([])
        },
        cookies: has("cookies"),
        body: has("body"),
        max_body: config.max_body.bytes(),
        exclusions: exclusions.into(),
    });
    Ok(Arc::new(WafSpec { config, filter }))
}

/// Percent-decoded (a second time when escapes remain: double encoding).
fn url_decoded(raw: &[u8]) -> Cow<'_, [u8]> {
    let once: Cow<'_, [u8]> = percent_encoding::percent_decode(raw).into();
    if once.contains(&b'%') && once.as_ref() != raw {
        let twice: Vec<u8> = percent_encoding::percent_decode(&once).collect();
        return Cow::Owned(twice);
    }
    once
}

/// Whether a value could hold an SQL injection at all. One token of letters, digits and
/// `_ . ~ @ : / -` (a name, a number, an id, a path, a product token like `curl/8.0`) cannot,
/// unless it opens a comment (`--`, `/*`); skipping such values saves libinjection's passes
/// (about 12,000 instructions each) on the common case.
fn might_be_sqli(v: &[u8]) -> bool {
    let plain = v
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"_.~@:/-".contains(b));
    !plain || v.windows(2).any(|w| w == b"--" || w == b"/*" || w == b"*/")
}

/// Whether a value could hold XSS at all: without a tag bracket, a quote, a backtick or an
/// `=` there is no tag, attribute or attribute breakout for libinjection to find.
fn might_be_xss(v: &[u8]) -> bool {
    v.iter().any(|b| b"<>\"'=`".contains(b))
}

/// A finding: which detector, and where.
type Finding = (Detector, String);

impl Waf {
    /// Check one value in all its forms; the first finding not excluded.
    fn value(&self, value: &[u8], place: Place<'_>) -> Option<Finding> {
        if value.is_empty() {
            return None;
        }
        let mut forms: Vec<Cow<'_, [u8]>> = vec![Cow::Borrowed(value)];
        if value.contains(&b'&') {
            if let Ok(text) = std::str::from_utf8(value) {
                let decoded = html_escape::decode_html_entities(text);
                if decoded.as_bytes() != value {
                    forms.push(Cow::Owned(decoded.into_owned().into_bytes()));
                }
            }
        }
        for form in &forms {
            for detector in [Detector::Sqli, Detector::Xss] {
                let found = match detector {
                    Detector::Sqli => {
                        might_be_sqli(form) && libinjectionrs::detect_sqli(form).is_injection()
                    }
                    Detector::Xss => {
                        might_be_xss(form) && libinjectionrs::detect_xss(form).is_injection()
                    }
                };
                if found && !self.exclusions.iter().any(|x| x.covers(detector, &place)) {
                    let at = match place.name() {
                        "" => place.kind().to_string(),
                        n => format!("{}:{n}", place.kind()),
                    };
                    return Some((detector, at));
                }
            }
        }
        None
    }

    /// Every `key=value` pair of a query string or form body, both decoded.
    fn pairs(&self, raw: &[u8], kind: fn(&str) -> Place<'_>) -> Option<Finding> {
        for (k, v) in form_urlencoded::parse(raw) {
            let decoded = url_decoded(v.as_bytes()).into_owned();
            let hit = self
                .value(&decoded, kind(&k))
                .or_else(|| self.value(k.as_bytes(), kind(&k)));
            if hit.is_some() {
                return hit;
            }
        }
        None
    }

    fn head(&self, req: &RequestHeader) -> Option<Finding> {
        if self.path {
            let path = url_decoded(req.uri.path().as_bytes());
            if let Some(f) = self.value(&path, Place::Path) {
                return Some(f);
            }
        }
        if self.query {
            if let Some(q) = req.uri.query() {
                if let Some(f) = self.pairs(q.as_bytes(), |k| Place::Query(k)) {
                    return Some(f);
                }
            }
        }
        for name in self.headers.iter() {
            for v in req.headers.get_all(name) {
                if let Some(f) =
                    self.value(&url_decoded(v.as_bytes()), Place::Header(name.as_str()))
                {
                    return Some(f);
                }
            }
        }
        if self.cookies {
            for v in req.headers.get_all(http::header::COOKIE) {
                for pair in v.as_bytes().split(|b| *b == b';') {
                    let pair = pair.trim_ascii();
                    let (name, value) = match pair.iter().position(|b| *b == b'=') {
                        Some(i) => (&pair[..i], &pair[i + 1..]),
                        None => (&b""[..], pair),
                    };
                    let name = String::from_utf8_lossy(name);
                    if let Some(f) = self.value(&url_decoded(value), Place::Cookie(&name)) {
                        return Some(f);
                    }
                }
            }
        }
        None
    }

    fn json(&self, v: &serde_json::Value, key: &str) -> Option<Finding> {
        match v {
            serde_json::Value::String(s) => {
                self.value(&url_decoded(s.as_bytes()), Place::Body(key))
            }
            serde_json::Value::Array(items) => items.iter().find_map(|i| self.json(i, key)),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
                self.value(k.as_bytes(), Place::Body(k))
                    .or_else(|| self.json(v, k))
            }),
            _ => None,
        }
    }

    fn body_of(&self, kind: BodyKind, body: &[u8], whole: bool) -> Option<Finding> {
        match kind {
            BodyKind::Form => self.pairs(body, |k| Place::Body(k)),
            BodyKind::Json if whole => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(doc) => self.json(&doc, ""),
                Err(_) => self.value(body, Place::Body("")),
            },
            // A prefix of a document does not parse: it is read as one value.
            BodyKind::Json => self.value(body, Place::Body("")),
        }
    }

    /// Count (and in block mode refuse) a finding.
    fn found(&self, (detector, at): Finding, cx: &mut Context) -> Result<(), Reply> {
        METRICS
            .blocked_requests
            .with_label_values(&[cx.route_name(), &self.name, detector.as_str()])
            .inc();
        log::warn!(
            "waf `{}`: {} in {at} (request {}, {})",
            self.name,
            detector.as_str(),
            cx.request_id.as_str(),
            if self.mode == Mode::Block {
                "blocked"
            } else {
                "detected only"
            }
        );
        match self.mode {
            Mode::Block => {
                cx.notes.push("waf_blocked");
                Err(Reply::error(error::REQUEST_BLOCKED))
            }
            Mode::Detect => {
                cx.notes.push("waf_detected");
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

/// A body being held back until it is inspected.
struct Held {
    kind: BodyKind,
    data: Vec<u8>,
}

#[async_trait]
impl Filter for Waf {
    fn phases(&self) -> Phases {
        match self.body {
            true => Phases::REQUEST | Phases::REQUEST_BODY,
            false => Phases::REQUEST,
        }
    }

    /// Before authentication: an attack costs no credential check.
    fn stage(&self) -> Stage {
        Stage::BeforeAuth
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        if let Some(f) = self.head(req) {
            self.found(f, cx)?;
        }
        if self.body {
            let ct = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let kind = if ct.starts_with("application/x-www-form-urlencoded") {
                Some(BodyKind::Form)
            } else if ct.starts_with("application/json") || ct.contains("+json") {
                Some(BodyKind::Json)
            } else {
                None
            };
            if let Some(kind) = kind {
                cx.state.insert(Held {
                    kind,
                    data: Vec::new(),
                });
            }
        }
        Ok(())
    }

    async fn request_body(
        &self,
        chunk: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(held) = cx.state.get_mut::<Held>() else {
            return Ok(());
        };
        if let Some(c) = chunk.as_deref() {
            held.data.extend_from_slice(c);
        }
        let full = held.data.len() > self.max_body;
        if !end && !full {
            // Held back until inspected (an empty chunk is not sent).
            *chunk = Some(Bytes::new());
            return Ok(());
        }
        let Some(Held { kind, data }) = cx.state.remove::<Held>() else {
            return Ok(());
        };
        let inspected = &data[..data.len().min(self.max_body)];
        if let Some(f) = self.body_of(kind, inspected, !full) {
            self.found(f, cx)?;
        }
        *chunk = Some(Bytes::from(data));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waf(exclusions: &[&str]) -> Waf {
        Waf {
            name: "w".into(),
            mode: Mode::Block,
            path: true,
            query: true,
            headers: vec![HeaderName::from_static("user-agent")].into(),
            cookies: true,
            body: true,
            max_body: 1024,
            exclusions: exclusions
                .iter()
                .map(|e| Exclusion::parse(e).unwrap())
                .collect(),
        }
    }

    fn head(w: &Waf, uri: &str, headers: &[(&str, &str)]) -> Option<Finding> {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        w.head(&req)
    }

    #[test]
    fn finds_sqli_and_xss_where_they_are() {
        let w = waf(&[]);
        assert_eq!(
            head(&w, "/search?q=1%27%20OR%20%271%27%3D%271", &[]).map(|f| f.0),
            Some(Detector::Sqli)
        );
        assert_eq!(
            head(&w, "/p?c=%3Cscript%3Ealert(1)%3C%2Fscript%3E", &[]).map(|f| f.0),
            Some(Detector::Xss)
        );
        // Double encoding and HTML entities do not hide it.
        assert!(head(
            &w,
            "/p?c=%253Cscript%253Ealert(1)%253C%252Fscript%253E",
            &[]
        )
        .is_some());
        assert!(head(&w, "/p", &[("cookie", "a=1; session=1' or '1'='1")]).is_some());
        assert!(head(&w, "/p", &[("user-agent", "<svg onload=alert(1)>")]).is_some());
        let f = head(
            &w,
            "/p?name=x&id=1%20UNION%20SELECT%20password%20FROM%20users",
            &[],
        )
        .unwrap();
        assert_eq!(f.1, "query:id");
    }

    #[test]
    fn ordinary_requests_pass() {
        let w = waf(&[]);
        for uri in [
            "/api/users/42?sort=name&order=asc",
            "/search?q=O%27Brien",
            "/search?q=rock+%27n%27+roll",
            "/docs?q=select+a+plan",
            "/a?email=al%40example.com&next=%2Fhome",
        ] {
            assert_eq!(
                head(
                    &w,
                    uri,
                    &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")]
                ),
                None,
                "{uri}"
            );
        }
    }

    #[test]
    fn the_prefilters_never_hide_what_libinjection_finds() {
        let samples: &[&[u8]] = &[
            b"1 union select password from users",
            b"1' or '1'='1",
            b"admin'--",
            b"1;drop table x",
            b"<script>alert(1)</script>",
            b"\" onmouseover=alert(1)",
            b"javascript:alert(1)",
            b"<img src=x onerror=alert(1)>",
            b"x` onload=alert(1)",
            b"1 or 1=1",
            b"1/**/or/**/1=1",
            b"running shoes",
            b"page",
            b"42",
            b"bench/1.0",
            b"1/0",
            b"1-1",
            b"1/1",
            b"/a/1",
            b"x-1",
            b"a.b/c-1",
            b"admin--",
            b"1/*x*/",
            b"1--",
            b"-1",
            b"1:1",
            b"@@version",
            b"1-0",
            b"0x41/1",
        ];
        for s in samples {
            if libinjectionrs::detect_sqli(s).is_injection() {
                assert!(might_be_sqli(s), "{:?}", String::from_utf8_lossy(s));
            }
            if libinjectionrs::detect_xss(s).is_injection() {
                assert!(might_be_xss(s), "{:?}", String::from_utf8_lossy(s));
            }
        }
        assert!(!might_be_sqli(b"page_2.html") && !might_be_xss(b"running shoes"));
        assert!(!might_be_sqli(b"/api/v1/users/42") && !might_be_sqli(b"curl/8.0.1"));
        assert!(might_be_sqli(b"admin--") && might_be_sqli(b"1/**/or"));
    }

    #[test]
    fn exclusions_turn_findings_off_by_place() {
        let attack = "/p?q=1%27%20OR%20%271%27%3D%271";
        assert!(head(&waf(&["sqli:query:q"]), attack, &[]).is_none());
        assert!(head(&waf(&["*:query"]), attack, &[]).is_none());
        assert!(head(&waf(&["xss"]), attack, &[]).is_some());
        assert!(head(&waf(&["sqli:query:other"]), attack, &[]).is_some());
        assert!(Exclusion::parse("rce").is_err());
        assert!(Exclusion::parse("sqli:nowhere").is_err());
    }

    #[test]
    fn json_and_form_bodies() {
        let w = waf(&[]);
        let json = br#"{"name":"Al","comment":{"text":"<script>alert(1)</script>"}}"#;
        assert_eq!(
            w.body_of(BodyKind::Json, json, true).map(|f| f.1),
            Some("body:text".into())
        );
        assert!(w
            .body_of(
                BodyKind::Json,
                br#"{"name":"O'Brien","tags":["a","b"]}"#,
                true
            )
            .is_none());
        assert!(w
            .body_of(BodyKind::Form, b"user=admin&pass=x%27+or+1%3D1--", true)
            .is_some());
    }
}
