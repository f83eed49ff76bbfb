//! The `waf` policy (libinjection) through the real gateway: Debian wfuzz's SQL-injection and
//! XSS lists sent in the query, a JSON body and a cookie, a benign list of our own
//! (`tests/data/waf-benign.txt`: names with apostrophes, quoted searches, markdown, code), and
//! `detect` mode letting everything through while counting.

mod common;
use common::*;

const SQL: &str = "/usr/share/wfuzz/wordlist/Injections/SQL.txt";
const XSS: &str = "/usr/share/wfuzz/wordlist/Injections/XSS.txt";

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

#[test]
fn attack_lists_are_blocked_and_benign_traffic_passes() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    let sql = lines(SQL);
    let xss = lines(XSS);
    let benign = lines(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/waf-benign.txt"
    ));
    let rate = |n: usize, of: usize| n as f64 / of as f64;
    let ([sq, sb, sc], _) = blocked(&gw, "/guarded", &sql);
    let ([xq, xb, xc], _) = blocked(&gw, "/guarded", &xss);
    let ([bq, bb, bc], false_positives) = blocked(&gw, "/guarded", &benign);
    println!(
        "WAF libinjection: SQL {}/{} {}/{} {}/{} (query/body/cookie), XSS {}/{} {}/{} {}/{}, benign false positives {}/{} {}/{} {}/{}",
        sq, sql.len(), sb, sql.len(), sc, sql.len(),
        xq, xss.len(), xb, xss.len(), xc, xss.len(),
        bq, benign.len(), bb, benign.len(), bc, benign.len(),
    );
    // wfuzz's SQL list is a third whole injections, the rest fragments (a lone quote, `--`,
    // `;`), which libinjection rightly lets pass; its XSS list is nearly all whole vectors.
    for n in [sq, sb, sc] {
        assert!(
            rate(n, sql.len()) >= 0.24,
            "SQL list: {n}/{} blocked",
            sql.len()
        );
    }
    for n in [xq, xb, xc] {
        assert!(
            rate(n, xss.len()) >= 0.75,
            "XSS list: {n}/{} blocked",
            xss.len()
        );
    }
    for n in [bq, bb, bc] {
        assert!(
            n <= 2,
            "benign list: {n} false positives: {false_positives:?}"
        );
    }
    let series = "pylon_blocked_requests_total{policy=\"guard\",reason=\"sqli\",route=\"guarded\"}";
    assert!(metric(admin, series) >= (sq + sb + sc) as f64 * 0.5);
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
