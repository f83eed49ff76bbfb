//! The `libinjection` engine: SQL-injection and XSS detection with libinjection
//! (`libinjectionrs`, a pure-Rust port: its fingerprint tables, not patterns of our own).
//!
//! What it reads, as `inspect` says: the path, each query parameter, the chosen headers, each
//! cookie, and a bounded JSON or form body (every string and key, every field). Each value is
//! URL-decoded (twice when the first pass leaves escapes, against double encoding) and, when it
//! has entities, HTML-decoded as well, and each form is checked. Findings are `sqli` or `xss`.
//! `exclude_rules` turn findings off for false positives, by detector and place: `"sqli"`,
//! `"xss:query:q"`, `"*:cookie:session"`, `"sqli:body:description"`.

use super::{Engine, Finding, Head, WafConfig};
use crate::filter::Context;
use async_trait::async_trait;
use http::HeaderName;
use pingora::http::RequestHeader;
use std::any::Any;
use std::borrow::Cow;

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

pub struct Libinjection {
    path: bool,
    query: bool,
    headers: Box<[HeaderName]>,
    cookies: bool,
    exclusions: Box<[Exclusion]>,
}

impl Libinjection {
    /// The engine for a policy's `inspect`, `headers` and `exclude_rules`; every problem.
    pub fn new(config: &WafConfig) -> Result<Libinjection, Vec<String>> {
        let mut errors = Vec::new();
        let mut headers = Vec::new();
        for h in &config.headers {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => headers.push(n),
                Err(_) => errors.push(format!("{h:?} in `headers` is not a header name")),
            }
        }
        let mut exclusions = Vec::new();
        for e in &config.exclude_rules {
            match Exclusion::parse(e) {
                Ok(x) => exclusions.push(x),
                Err(msg) => errors.push(msg),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let has = |what: &str| config.inspect.iter().any(|i| i == what);
        Ok(Libinjection {
            path: has("path"),
            query: has("query"),
            headers: if has("headers") {
                headers.into()
            } else {
                Box::new([])
            },
            cookies: has("cookies"),
            exclusions: exclusions.into(),
        })
    }
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

/// Whether a value could hold an SQL injection at all, so that libinjection's passes (about
/// 14,000 instructions per value) are skipped on the common cases:
/// - one token of letters, digits and `_ . ~ @ : / -` (a name, a number, an id, a path, a
///   product token like `curl/8.0`) that opens no comment (`--`, `/*`);
/// - plain words ([`plain_words`]), like a search for `running shoes`.
fn might_be_sqli(v: &[u8]) -> bool {
    let plain = v
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"_.~@:/-".contains(b));
    if plain {
        return v.windows(2).any(|w| w == b"--" || w == b"/*" || w == b"*/");
    }
    !plain_words(v)
}

/// Words of ASCII letters and digits between spaces, where no word is one libinjection knows
/// as SQL (a keyword, function, operator...), no two neighbours form one (`SOUNDS LIKE`), and
/// no number runs into letters (`1union`). libinjection reads such a value as barewords and
/// numbers only, and none of its SQL-injection fingerprints is made of those alone (checked
/// against its table when this was written; the unit test below holds it to libinjection).
fn plain_words(v: &[u8]) -> bool {
    if !v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b' ') {
        return false;
    }
    let Ok(text) = std::str::from_utf8(v) else {
        return false;
    };
    let mut previous: Option<&str> = None;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let number = word.as_bytes()[0].is_ascii_digit();
        if number && !word.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if !number && sql_word(&[word.as_bytes()]) {
            return false;
        }
        if let Some(p) = previous {
            if sql_word(&[p.as_bytes(), b" ", word.as_bytes()]) {
                return false;
            }
        }
        previous = Some(word);
    }
    true
}

/// Room for the longest word in libinjection's keyword table (29 bytes).
const LONGEST_KEYWORD: usize = 32;

/// Whether libinjection's keyword table knows the word made of `parts` (ASCII, any case) as
/// SQL: what its `lookup_word` tells from a bareword, without the upper-cased `String` that
/// allocates per call (twice per word of a searched phrase, with the pair).
fn sql_word(parts: &[&[u8]]) -> bool {
    use libinjectionrs::sqli::sqli_data::SQL_KEYWORDS;
    let mut upper = [0u8; LONGEST_KEYWORD];
    let mut len = 0;
    for b in parts.iter().flat_map(|p| p.iter()) {
        let Some(slot) = upper.get_mut(len) else {
            return false;
        };
        *slot = b.to_ascii_uppercase();
        len += 1;
    }
    let word = &upper[..len];
    // `n` entries are barewords to libinjection too; every other kind is SQL.
    SQL_KEYWORDS
        .binary_search_by(|k| k.word.as_bytes().cmp(word))
        .ok()
        .and_then(|i| SQL_KEYWORDS.get(i))
        .is_some_and(|k| k.token_type != b'n')
}

/// Whether a value could hold XSS at all: without a tag bracket, a quote, a backtick or an
/// `=` there is no tag, attribute or attribute breakout for libinjection to find.
fn might_be_xss(v: &[u8]) -> bool {
    v.iter().any(|b| b"<>\"'=`".contains(b))
}

impl Libinjection {
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
                    return Some(Finding {
                        reason: detector.as_str(),
                        at,
                    });
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

    fn head_of(&self, req: &RequestHeader) -> Option<Finding> {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

impl BodyKind {
    /// The bodies this engine reads, by content type.
    fn of(req: &RequestHeader) -> Option<BodyKind> {
        let ct = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ct.starts_with("application/x-www-form-urlencoded") {
            Some(BodyKind::Form)
        } else if ct.starts_with("application/json") || ct.contains("+json") {
            Some(BodyKind::Json)
        } else {
            None
        }
    }
}

#[async_trait]
impl Engine for Libinjection {
    async fn head(&self, req: &RequestHeader, _cx: &Context, body: bool) -> Head {
        if let Some(f) = self.head_of(req) {
            return Head::Found(f);
        }
        match BodyKind::of(req).filter(|_| body) {
            Some(kind) => Head::Body(Box::new(kind)),
            None => Head::Clean,
        }
    }

    async fn body(
        &self,
        state: Box<dyn Any + Send + Sync>,
        body: &[u8],
        whole: bool,
    ) -> Option<Finding> {
        let kind = state.downcast_ref::<BodyKind>()?;
        self.body_of(*kind, body, whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waf(exclusions: &[&str]) -> Libinjection {
        Libinjection {
            path: true,
            query: true,
            headers: vec![HeaderName::from_static("user-agent")].into(),
            cookies: true,
            exclusions: exclusions
                .iter()
                .map(|e| Exclusion::parse(e).unwrap())
                .collect(),
        }
    }

    fn head(w: &Libinjection, uri: &str, headers: &[(&str, &str)]) -> Option<Finding> {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        w.head_of(&req)
    }

    #[test]
    fn finds_sqli_and_xss_where_they_are() {
        let w = waf(&[]);
        assert_eq!(
            head(&w, "/search?q=1%27%20OR%20%271%27%3D%271", &[]).map(|f| f.reason),
            Some("sqli")
        );
        assert_eq!(
            head(&w, "/p?c=%3Cscript%3Ealert(1)%3C%2Fscript%3E", &[]).map(|f| f.reason),
            Some("xss")
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
        assert_eq!(f.at, "query:id");
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
            b"1 union select password from users",
            b"union select 1",
            b"admin or 1",
            b"1 or 1",
            b"x sounds like y",
            b"1union select 1",
            b"select",
            b"drop table users",
            b"waitfor delay 5",
            b"1 and 1",
            b"a not in b",
            b"union all select null",
            b"order by 1",
            b"running shoes",
            b"rock n roll 1969",
            b"select a plan",
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
        assert!(!might_be_sqli(b"running shoes") && !might_be_sqli(b"size 42 red"));
        assert!(might_be_sqli(b"1 union select 1") && might_be_sqli(b"x sounds like y"));
    }

    #[test]
    fn sql_word_answers_as_libinjection_does() {
        use libinjectionrs::sqli::sqli_data::{lookup_word, SQL_KEYWORDS};
        use libinjectionrs::sqli::TokenType;
        assert!(SQL_KEYWORDS.iter().all(|k| k.word.len() <= LONGEST_KEYWORD));
        let mut words: Vec<String> = SQL_KEYWORDS.iter().map(|k| k.word.to_string()).collect();
        words.extend(SQL_KEYWORDS.iter().map(|k| k.word.to_ascii_lowercase()));
        words.extend(["running", "shoes", "x", "", "unionx", &"a".repeat(40)].map(String::from));
        for w in &words {
            assert_eq!(
                sql_word(&[w.as_bytes()]),
                lookup_word(w) != TokenType::Bareword,
                "{w:?}"
            );
        }
        assert!(sql_word(&[b"sounds", b" ", b"like"]));
        assert!(!sql_word(&[b"running", b" ", b"shoes"]));
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
            w.body_of(BodyKind::Json, json, true).map(|f| f.at),
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
