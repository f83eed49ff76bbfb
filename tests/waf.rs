//! The `waf` policy (libinjection) through the real gateway: Debian wfuzz's SQL-injection and
//! XSS lists sent in the query, a JSON body and a cookie, a benign list of our own
//! (`tests/data/waf-benign.txt`: names with apostrophes, quoted searches, markdown, code), and
//! `detect` mode letting everything through while counting; and the same with the OWASP CRS
//! engine (Debian's `modsecurity-crs` on libmodsecurity).

mod common;
use common::*;

const SQL: &str = "/usr/share/wfuzz/wordlist/Injections/SQL.txt";
const XSS: &str = "/usr/share/wfuzz/wordlist/Injections/XSS.txt";
const BENIGN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/waf-benign.txt");

fn config(e: &Echo, admin: u16) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[upstreams.pool]
targets = ["{addr}"]

[policies.guard]
kind = "waf"
mode = "block"

[policies.watch]
kind = "waf"
mode = "detect"

[[routes]]
name = "guarded"
paths = ["/guarded"]
upstream = "pool"
policies = ["guard"]

[[routes]]
name = "watched"
paths = ["/watched"]
upstream = "pool"
policies = ["watch"]

[policies.crs]
kind = "waf"
engine = "crs"
paranoia_level = 1
anomaly_threshold = 5

[policies.crs-watch]
kind = "waf"
engine = "crs"
mode = "detect"

[[routes]]
name = "crs"
paths = ["/crs"]
upstream = "pool"
policies = ["crs"]

[[routes]]
name = "crs-watched"
paths = ["/crs-watched"]
upstream = "pool"
policies = ["crs-watch"]
"#,
        addr = e.addr
    )
}

fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (make test installs wfuzz)"))
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// How many of `payloads` the route refuses, in the query, a JSON body and a cookie, and
/// which.
fn blocked(gw: &Gateway, path: &str, payloads: &[String]) -> ([usize; 3], Vec<String>) {
    let mut counts = [0; 3];
    let mut which = Vec::new();
    for p in payloads {
        let q = request("GET", &gw.url(&format!("{path}?q={}", enc(p))), &[], None);
        let body = serde_json::json!({"comment": p}).to_string();
        let b = request(
            "POST",
            &gw.url(path),
            &[("content-type", "application/json")],
            Some(&body),
        );
        let cookie = format!("c={}", enc(p));
        let c = request("GET", &gw.url(path), &[("cookie", &cookie)], None);
        for (i, r) in [q, b, c].iter().enumerate() {
            match r.status {
                403 => {
                    assert_error(r, 403, "request_blocked");
                    counts[i] += 1;
                    which.push(p.clone());
                }
                200 => {}
                other => panic!("{path} {p:?}: status {other}: {}", r.body),
            }
        }
    }
    (counts, which)
}

/// Blocked counts per place (query, body, cookie) for the SQL, XSS and benign lists.
struct Rates {
    sql: [usize; 3],
    xss: [usize; 3],
    benign: [usize; 3],
    false_positives: Vec<String>,
}

/// Send every list through `path` and check the rates: at least `sql` and `xss` of each list
/// blocked in every place, at most `benign` false positives in each.
fn check_rates(gw: &Gateway, path: &str, engine: &str, sql: f64, xss: f64, benign: usize) -> Rates {
    let lists = [lines(SQL), lines(XSS), lines(BENIGN)];
    let (s, _) = blocked(gw, path, &lists[0]);
    let (x, _) = blocked(gw, path, &lists[1]);
    let (b, false_positives) = blocked(gw, path, &lists[2]);
    let [n_sql, n_xss, n_benign] = [0, 1, 2].map(|i| lists[i].len());
    println!(
        "WAF {engine}: SQL {s:?} of {n_sql} (query/body/cookie), XSS {x:?} of {n_xss}, benign false positives {b:?} of {n_benign}"
    );
    for n in s {
        assert!(
            n as f64 / n_sql as f64 >= sql,
            "SQL list: {n}/{n_sql} blocked"
        );
    }
    for n in x {
        assert!(
            n as f64 / n_xss as f64 >= xss,
            "XSS list: {n}/{n_xss} blocked"
        );
    }
    for n in b {
        assert!(
            n <= benign,
            "benign list: {n} false positives: {false_positives:?}"
        );
    }
    Rates {
        sql: s,
        xss: x,
        benign: b,
        false_positives,
    }
}

#[test]
fn attack_lists_are_blocked_and_benign_traffic_passes() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    // wfuzz's SQL list is a third whole injections, the rest fragments (a lone quote, `--`,
    // `;`), which libinjection rightly lets pass; its XSS list is nearly all whole vectors.
    // Measured: SQL 41, 41, 31 of 125; XSS 33 of 39 in each place; benign 2, 2, 0.
    let r = check_rates(&gw, "/guarded", "libinjection", 0.24, 0.75, 2);
    let series = "pylon_blocked_requests_total{policy=\"guard\",reason=\"sqli\",route=\"guarded\"}";
    assert!(metric(admin, series) >= r.sql.iter().sum::<usize>() as f64 * 0.5);
}

#[test]
fn detect_mode_counts_and_lets_through() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    let before = hits(&e);
    let r = get(&gw.url(&format!("/watched?q={}", enc("1' OR '1'='1"))));
    assert_eq!(r.status, 200);
    assert_eq!(hits(&e), before + 1);
    let series = "pylon_blocked_requests_total{policy=\"watch\",reason=\"sqli\",route=\"watched\"}";
    assert_eq!(metric(admin, series), 1.0);
    let r = get(&gw.url(&format!("/guarded?q={}", enc("1' OR '1'='1"))));
    assert_error(&r, 403, "request_blocked");
    assert_eq!(
        hits(&e),
        before + 1,
        "a blocked request never reaches the upstream"
    );
}

#[test]
fn the_core_rule_set_blocks_the_attack_lists_with_few_false_positives() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    // Measured (paranoia 1, threshold 5): SQL 49, 49, 42 of 125; XSS 38, 38, 35 of 39 (the
    // three let through in a cookie are percent-encoded twice, which ModSecurity lets through
    // as well); benign 4 in each place (markdown links and images). Before the engine was
    // mended (vendor/README.md): SQL 48, 48, 39; XSS 38 each; benign 6, 6, 7.
    let r = check_rates(&gw, "/crs", "CRS", 0.3, 0.85, 4);
    assert!(!r.false_positives.iter().any(|p| p.contains("O'Brien")));
    let series = "pylon_blocked_requests_total{policy=\"crs\",reason=\"crs\",route=\"crs\"}";
    let all: usize = [r.sql, r.xss, r.benign].iter().flatten().sum();
    assert_eq!(metric(admin, series), all as f64);
}

#[test]
fn the_core_rule_set_holds_bodies_back_and_detect_mode_lets_through() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    let before = hits(&e);
    // Beyond SQLi and XSS: path traversal and a shell command, which libinjection does not
    // look for.
    for uri in [
        "/crs?file=..%2F..%2F..%2Fetc%2Fpasswd",
        "/crs?cmd=%3Bcat%20%2Fetc%2Fshadow",
    ] {
        assert_error(&get(&gw.url(uri)), 403, "request_blocked");
    }
    assert_eq!(hits(&e), before, "nothing refused reached the upstream");
    // A body is judged once it is in: the upstream has had the head by then, never the body.
    let body = serde_json::json!({"comment": "1' UNION SELECT password FROM users--"}).to_string();
    let r = request(
        "POST",
        &gw.url("/crs"),
        &[("content-type", "application/json")],
        Some(&body),
    );
    assert_error(&r, 403, "request_blocked");
    let before = hits(&e);
    let fine = serde_json::json!({"comment": "Loved it, O'Brien's best so far"}).to_string();
    let r = request(
        "POST",
        &gw.url("/crs"),
        &[("content-type", "application/json")],
        Some(&fine),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["body"],
        fine,
        "the held body reaches the upstream whole"
    );
    let r = request(
        "POST",
        &gw.url("/crs-watched"),
        &[("content-type", "application/json")],
        Some(&body),
    );
    assert_eq!(r.status, 200);
    assert_eq!(hits(&e), before + 2);
    let series =
        "pylon_blocked_requests_total{policy=\"crs-watch\",reason=\"crs\",route=\"crs-watched\"}";
    assert_eq!(metric(admin, series), 1.0);
}
