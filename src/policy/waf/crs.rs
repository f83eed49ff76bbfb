//! The `crs` engine: the OWASP Core Rule Set (Debian's `modsecurity-crs`) on
//! `zentinel-modsec`, a ModSecurity rule engine in safe Rust (why this engine and not
//! libmodsecurity: `docs/security.md`).
//!
//! The rules run in CRS's anomaly-scoring mode: each matching rule adds to the request's
//! score, and the blocking evaluation (rule 949110) refuses a request whose score reaches
//! `anomaly_threshold` (5 by default: one critical rule) at the chosen `paranoia_level`. What
//! the engine reads is the whole request: URI and arguments, every header and cookie, and the
//! body (JSON, form and multipart parsed) up to `max_body`. Only the request rules
//! (`REQUEST-*.conf`) are loaded: responses are not inspected. Debian's application exclusion
//! packages (`REQUEST-903.*`, off unless enabled in the setup) are left out: their `skipAfter`
//! markers make this engine skip every later rule. Because a rule set that loads is not
//! proof that it detects anything, loading also sends three canary attacks (SQL injection,
//! XSS, path traversal) through it and refuses a rule set that lets all of them pass.
//!
//! A transaction costs most of a millisecond of CPU with the full rule set, too long for a
//! proxy thread: it runs on Tokio's blocking threads, at most one per core at once. The head is
//! always judged as soon as it is read (so a request whose body never comes is still
//! inspected), and a request with a body is judged again, whole, once its body is in.
//!
//! `exclude_rules` are CRS rule ids: `"942100"` or a range `"942100-942199"` (rule removed),
//! or `"942100:query:q"`, `"942100:body:comment"`, `"942100:cookie:session"`,
//! `"942100:header:referer"` (that rule no longer reads that argument, cookie or header).
//! Findings are counted as `crs` and logged with the ids of the rules that matched.

use super::{Engine, Finding, Head, WafConfig};
use crate::filter::Context;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use std::any::Any;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;
use zentinel_modsec::ModSecurity;

/// Debian's `modsecurity-crs` layout.
const DEFAULT_RULES: &str = "/usr/share/modsecurity-crs/rules";
const DEFAULT_SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";
/// The rule file whose presence says a directory holds the request rules.
const BLOCKING_RULES: &str = "REQUEST-949-BLOCKING-EVALUATION.conf";

/// Transactions evaluated at once: one per core, so a flood of inspected requests queues here
/// instead of growing Tokio's blocking pool.
static SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

pub struct Crs {
    rules: Arc<ModSecurity>,
}

impl Crs {
    /// Load the rule set a policy asks for; every problem.
    pub fn load(config: &WafConfig) -> Result<Crs, Vec<String>> {
        let text = directives(config)?;
        let rules = ModSecurity::from_string(&text)
            .map_err(|e| vec![format!("the CRS rules do not load: {e}")])?;
        // Three attack families: exclusions may turn one off, not a working rule set.
        let canaries = [
            "/?id=1%27%20OR%20%271%27%3D%271",
            "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "/?file=..%2F..%2F..%2Fetc%2Fpasswd",
        ];
        let caught = canaries.iter().any(|uri| {
            let canary = Request {
                client: "192.0.2.1".into(),
                method: "GET".into(),
                uri: (*uri).into(),
                version: "HTTP/1.1",
                headers: vec![("Host".into(), "pylon.test".into())],
            };
            verdict(&rules, &canary, b"").is_some()
        });
        if !caught {
            return Err(vec![
                "the CRS rules loaded but let canary attacks (SQL injection, XSS, path \
                 traversal) through: check `crs_rules`, `crs_setup` and `exclude_rules`"
                    .into(),
            ]);
        }
        Ok(Crs {
            rules: Arc::new(rules),
        })
    }

    /// Judge a request (with its body, or the head alone) on a blocking thread.
    async fn judge(&self, req: Arc<Request>, body: Vec<u8>) -> Option<Finding> {
        let _slot = SLOTS.acquire().await.ok();
        let rules = Arc::clone(&self.rules);
        tokio::task::spawn_blocking(move || verdict(&rules, &req, &body))
            .await
            .unwrap_or_else(|_| {
                Some(Finding {
                    reason: "crs",
                    at: "a rule engine failure".into(),
                })
            })
    }
}

/// The configuration text: engine settings, the CRS setup, the policy's paranoia level and
/// threshold, the request rules, then the exclusions (which must follow the rules they name).
fn directives(config: &WafConfig) -> Result<String, Vec<String>> {
    let mut errors = Vec::new();
    let rules = config.crs_rules.as_deref().unwrap_or(DEFAULT_RULES);
    let setup = config.crs_setup.as_deref().unwrap_or(DEFAULT_SETUP);
    if !Path::new(rules).join(BLOCKING_RULES).is_file() {
        errors.push(format!(
            "`crs_rules`: {rules:?} holds no CRS request rules ({BLOCKING_RULES}); \
             Debian's modsecurity-crs package installs them in {DEFAULT_RULES}"
        ));
    }
    if !Path::new(setup).is_file() {
        errors.push(format!("`crs_setup`: {setup:?} is not a file"));
    }
    for (what, path) in [("crs_rules", rules), ("crs_setup", setup)] {
        // Written into the rule language unquoted: no spaces, quotes or line breaks.
        if path.contains(|c: char| c.is_whitespace() || c == '"') {
            errors.push(format!("`{what}`: {path:?} cannot be used as a path here"));
        }
    }
    let paranoia = config.paranoia_level.unwrap_or(1);
    if !(1..=4).contains(&paranoia) {
        errors.push(format!("`paranoia_level` is 1 to 4, not {paranoia}"));
    }
    let threshold = config.anomaly_threshold.unwrap_or(5);
    if threshold == 0 {
        errors.push("`anomaly_threshold` must be at least 1".into());
    }
    let mut exclusions = String::new();
    for e in &config.exclude_rules {
        match exclusion(e) {
            Ok(line) => exclusions.push_str(&line),
            Err(msg) => errors.push(msg),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let includes = request_rules(rules).map_err(|e| vec![e])?;
    Ok(format!(
        r#"SecRuleEngine On
SecRequestBodyAccess On
SecResponseBodyAccess Off
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.+-]+\+)?json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
Include {setup}
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={paranoia}"
SecAction "id:900110,phase:1,nolog,pass,t:none,setvar:tx.inbound_anomaly_score_threshold={threshold},setvar:tx.outbound_anomaly_score_threshold=4"
{includes}{exclusions}"#
    ))
}

/// `Include` lines for the request rule files, in order, without the application exclusion
/// packages (`REQUEST-903.*`).
fn request_rules(dir: &str) -> Result<String, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("`crs_rules`: cannot read {dir:?}: {e}"))?;
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| {
            f.starts_with("REQUEST-") && !f.starts_with("REQUEST-903.") && f.ends_with(".conf")
        })
        .collect();
    files.sort();
    Ok(files
        .iter()
        .map(|f| format!("Include {dir}/{f}\n"))
        .collect())
}

/// One `exclude_rules` entry as a directive: a rule id or range, or a rule and a target.
fn exclusion(entry: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "`exclude_rules`: {entry:?} is not a CRS rule id, a range (942100-942199) or \
             id:place:name with place query, body, cookie or header"
        )
    };
    let id = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = entry.splitn(3, ':');
    let rule = parts.next().unwrap_or("");
    match (parts.next(), parts.next()) {
        (None, None) => {
            let ok = match rule.split_once('-') {
                Some((a, b)) => id(a) && id(b),
                None => id(rule),
            };
            ok.then(|| format!("SecRuleRemoveById {rule}\n"))
                .ok_or_else(bad)
        }
        (Some(place), Some(name)) if id(rule) => {
            let collection = match place {
                "query" | "body" => "ARGS",
                "cookie" => "REQUEST_COOKIES",
                "header" => "REQUEST_HEADERS",
                _ => return Err(bad()),
            };
            let plain = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            plain
                .then(|| format!("SecRuleUpdateTargetById {rule} \"!{collection}:{name}\"\n"))
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// A request as the engine reads it, owned, to go to a blocking thread (and, when the body
/// follows, to wait for it).
struct Request {
    client: String,
    method: String,
    uri: String,
    version: &'static str,
    headers: Vec<(String, String)>,
}

impl Request {
    fn of(req: &RequestHeader, cx: &Context) -> Request {
        Request {
            client: crate::client_addr::ip_text(cx.peek_client_ip(&req.headers)),
            method: req.method.as_str().to_string(),
            uri: req.uri.to_string(),
            version: match req.version {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            headers: req
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }
}

/// The attack rules that matched and what they read (`942100 in ARGS:q`), never the
/// values; at most a few, once each.
fn matched(tx: &zentinel_modsec::Transaction) -> String {
    let mut seen: Vec<String> = Vec::new();
    for m in tx.matched_data() {
        let Some(id) = &m.rule_id else { continue };
        // The engine also reports set-up rules and the first links of chains that did not
        // complete: keep the application-attack families (930000-944999) and anything that
        // read the client's arguments, cookies or body.
        let attack = id
            .parse::<u32>()
            .is_ok_and(|n| (930_000..945_000).contains(&n));
        let user_data = ["ARGS", "REQUEST_COOKIES", "REQUEST_BODY", "FILES", "XML"]
            .iter()
            .any(|c| m.variable.starts_with(c));
        let own = m.variable.starts_with('&') || m.variable.starts_with("TX");
        if own || !(attack || user_data) {
            continue;
        }
        let entry = format!("{id} in {}", m.variable.escape_debug());
        if !seen.contains(&entry) && seen.len() < 6 {
            seen.push(entry);
        }
    }
    format!("rules {}", seen.join(", "))
}

/// Run one transaction through the request phases.
fn verdict(rules: &ModSecurity, req: &Request, body: &[u8]) -> Option<Finding> {
    let mut tx = rules.new_transaction();
    tx.set_client_addr(&req.client, 0);
    let run = |tx: &mut zentinel_modsec::Transaction| -> zentinel_modsec::Result<()> {
        tx.process_uri(&req.uri, &req.method, req.version)?;
        for (k, v) in &req.headers {
            tx.add_request_header(k, v)?;
        }
        tx.process_request_headers()?;
        if !tx.has_intervention() {
            if !body.is_empty() {
                tx.append_request_body(body)?;
            }
            tx.process_request_body()?;
        }
        Ok(())
    };
    let at = match (run(&mut tx), tx.intervention()) {
        (Ok(()), None) => return None,
        (Ok(()), Some(i)) if i.status < 400 => return None,
        (Ok(()), Some(_)) => matched(&tx),
        // A request the engine cannot take is refused like an attack.
        (Err(e), _) => format!("a request the rule engine cannot read ({e})"),
    };
    Some(Finding { reason: "crs", at })
}

#[async_trait]
impl Engine for Crs {
    async fn head(&self, req: &RequestHeader, cx: &Context, body: bool) -> Head {
        let request = Arc::new(Request::of(req, cx));
        if let Some(f) = self.judge(Arc::clone(&request), Vec::new()).await {
            return Head::Found(f);
        }
        match body {
            true => Head::Body(Box::new(request)),
            false => Head::Clean,
        }
    }

    async fn body(
        &self,
        state: Box<dyn Any + Send + Sync>,
        body: &[u8],
        _whole: bool,
    ) -> Option<Finding> {
        let request = state.downcast::<Arc<Request>>().ok()?;
        self.judge(*request, body.to_vec()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> WafConfig {
        toml::from_str(&format!("engine = \"crs\"\n{extra}")).unwrap()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut all = vec![
            ("Host".to_string(), "api.example.com".to_string()),
            (
                "User-Agent".to_string(),
                "Mozilla/5.0 (X11; Linux x86_64)".to_string(),
            ),
            ("Accept".to_string(), "*/*".to_string()),
        ];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Request {
            client: "192.0.2.1".into(),
            method: "GET".into(),
            uri: uri.into(),
            version: "HTTP/1.1",
            headers: all,
        }
    }

    #[test]
    fn exclusions_become_directives_and_nothing_else() {
        assert_eq!(exclusion("942100").unwrap(), "SecRuleRemoveById 942100\n");
        assert_eq!(
            exclusion("942100-942199").unwrap(),
            "SecRuleRemoveById 942100-942199\n"
        );
        assert_eq!(
            exclusion("942100:cookie:session").unwrap(),
            "SecRuleUpdateTargetById 942100 \"!REQUEST_COOKIES:session\"\n"
        );
        for bad in [
            "sqli",
            "942100:query:a\"b",
            "942100:path:x",
            "1\nSecRuleEngine Off",
            "",
        ] {
            assert!(exclusion(bad).is_err(), "{bad:?}");
        }
        assert!(Crs::load(&config("paranoia_level = 7")).is_err());
        assert!(Crs::load(&config("crs_rules = \"/nonexistent\"")).is_err());
    }

    #[test]
    fn the_rule_set_refuses_attacks_and_passes_ordinary_requests() {
        let crs = Crs::load(&config("")).unwrap();
        let attack = request("/search?q=1%27%20OR%20%271%27%3D%271", &[]);
        let f = verdict(&crs.rules, &attack, b"").expect("an SQL injection");
        assert!(f.at.contains("942100"), "{}", f.at);
        assert!(verdict(
            &crs.rules,
            &request("/search?q=running+shoes&page=2", &[]),
            b""
        )
        .is_none());
        let cookie = request("/", &[("Cookie", "c=%3Cscript%3Ealert(1)%3C%2Fscript%3E")]);
        assert!(verdict(&crs.rules, &cookie, b"").is_some());
        // In a JSON body, and excluded by rule and target.
        let mut post = request("/comments", &[("Content-Type", "application/json")]);
        post.method = "POST".into();
        let body = br#"{"comment":"1' OR '1'='1"}"#;
        assert!(verdict(&crs.rules, &post, body).is_some());
        let excluded = Crs::load(&config("exclude_rules = [\"942100\"]")).unwrap();
        assert!(verdict(&excluded.rules, &attack, b"").is_none());
    }
}
