//! The filter model through the real gateway: response-phase filters on every response the
//! client gets, `Allow` on a 405, and usage counted per consumer.

mod common;
use common::*;

const KEY: &str = "filters-test-key";

fn config(e: &Echo, admin: u16) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[upstreams.pool]
targets = ["{addr}"]

[consumers.alice]
api_keys = ["{KEY}"]

[policies.keys]
kind = "api_key"

[policies.one]
kind = "rate_limit"
limit = 1
window = "1h"

[policies.headers]
kind = "security_headers"
hsts = "max-age=60"
content_type_options = true
remove = ["x-echo-server"]

[[routes]]
name = "private"
paths = ["/private"]
upstream = "pool"
policies = ["keys"]

[[routes]]
name = "limited"
paths = ["/limited"]
respond = {{ body = "ok" }}
policies = ["one"]

[[routes]]
name = "open"
paths = ["/open"]
methods = ["GET", "POST"]
upstream = "pool"
"#,
        addr = e.addr
    )
}

fn hsts(r: &Resp) -> Option<&str> {
    r.header("strict-transport-security")
}

#[test]
fn response_filters_run_on_the_gateways_own_answers_too() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway_with_server("global_policies = [\"headers\"]", &config(&e, admin));

    // Proxied: set, and the upstream's header removed.
    let r = get(&gw.url("/open"));
    assert_eq!(r.status, 200);
    assert_eq!(hsts(&r), Some("max-age=60"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-echo-server"), None);
    assert_eq!(r.server(), "e", "the body is still the upstream's");

    // The gateway's own 401, from an auth policy.
    let r = get(&gw.url("/private"));
    assert_error(&r, 401, "unauthorized");
    assert_eq!(hsts(&r), Some("max-age=60"));

    // A fixed answer, then its 429 with the rate-limit headers beside ours.
    let r = get(&gw.url("/limited"));
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(hsts(&r), Some("max-age=60"));
    let r = get(&gw.url("/limited"));
    assert_error(&r, 429, "rate_limited");
    assert_eq!(hsts(&r), Some("max-age=60"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"one\";q=1;w=3600"));

    // No route at all: the global policy still answers for the 404.
    let r = get(&gw.url("/nowhere"));
    assert_error(&r, 404, "route_not_found");
    assert_eq!(hsts(&r), Some("max-age=60"));

    // 405 names the methods the route takes (RFC 9110 requires `Allow`).
    let r = request("DELETE", &gw.url("/open"), &[], None);
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(hsts(&r), Some("max-age=60"));
}

#[test]
fn usage_is_counted_per_consumer() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    wait_for_port(admin);
    assert_eq!(
        get_with(&gw.url("/private"), &[("x-api-key", KEY)]).status,
        200
    );
    assert_eq!(
        get_with(&gw.url("/private"), &[("x-api-key", KEY)]).status,
        200
    );
    assert_eq!(get(&gw.url("/private")).status, 401);
    assert_eq!(get(&gw.url("/open")).status, 200);
    // A request is counted when it is logged, just after its answer went out.
    let scrape = || get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    wait_until(
        std::time::Duration::from_secs(5),
        "the last request counted",
        || scrape().contains("consumer=\"anonymous\",route=\"open\""),
    );
    let metrics = scrape();
    let count = |labels: &str| {
        let line = format!("pylon_consumer_requests_total{{{labels}}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(
        count("consumer=\"alice\",route=\"private\",status_class=\"2xx\""),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        count("consumer=\"anonymous\",route=\"private\",status_class=\"4xx\""),
        Some(1)
    );
    assert_eq!(
        count("consumer=\"anonymous\",route=\"open\",status_class=\"2xx\""),
        Some(1)
    );
}
