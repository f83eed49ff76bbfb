//! CORS through the real gateway: preflights answered without the upstream, auth or limits;
//! actual requests with and without credentials, regex and disallowed origins; the gateway's
//! own errors readable by the page; and a real browser (headless Chromium) making a
//! credentialed cross-origin `fetch` with a custom header, allowed from one origin and blocked
//! from another.

mod common;
use common::browser::{chromium, Pages};
use common::*;
use std::time::Duration;

const KEY: &str = "cors-test-key";

fn config(e: &Echo, page_origin: &str) -> String {
    format!(
        r#"[upstreams.pool]
targets = ["{addr}"]

[consumers.alice]
api_keys = ["{KEY}"]

[policies.keys]
kind = "api_key"

[policies.two]
kind = "rate_limit"
limit = 2
window = "1h"

[policies.web]
kind = "cors"
allow_origins = ["{page_origin}", "~^https://[a-z]+\\.example\\.com$"]
allow_methods = ["GET", "POST", "PUT"]
allow_headers = ["content-type", "x-custom", "x-api-key"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m"

[policies.any]
kind = "cors"
allow_origins = ["*"]

[policies.pass]
kind = "cors"
allow_origins = ["https://app.example.com"]
preflight_continue = true

[[routes]]
name = "api"
paths = ["/api"]
upstream = "pool"
policies = ["keys", "two", "web"]

[[routes]]
name = "web"
paths = ["/web"]
upstream = "pool"
policies = ["keys", "web"]

[[routes]]
name = "open"
paths = ["/open"]
upstream = "pool"
policies = ["any"]

[[routes]]
name = "pass"
paths = ["/pass"]
upstream = "pool"
policies = ["pass"]
"#,
        addr = e.addr
    )
}

fn preflight(gw: &Gateway, path: &str, origin: &str) -> Resp {
    request(
        "OPTIONS",
        &gw.url(path),
        &[
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-custom, x-api-key"),
        ],
        None,
    )
}

fn varies_on_origin(r: &Resp) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin"))
}

#[test]
fn preflights_are_answered_by_the_gateway_before_auth_and_limits() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e, "https://app.example.com"));
    let before = hits(&e);
    for _ in 0..5 {
        let r = preflight(&gw, "/api/items", "https://app.example.com");
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, POST, PUT")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type, x-custom, x-api-key")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("content-length"), None, "a 204 has no body length");
        assert!(varies_on_origin(&r));
    }
    assert_eq!(hits(&e), before, "the upstream never saw a preflight");
    // Five preflights later the limit of two still has both requests left.
    for _ in 0..2 {
        let r = get_with(
            &gw.url("/api/items"),
            &[("x-api-key", KEY), ("origin", "https://app.example.com")],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // A disallowed origin's preflight gets no CORS headers: the browser stops there.
    let r = preflight(&gw, "/api/items", "https://evil.com");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-methods"), None);
    // preflight_continue: the target answers preflights itself.
    let before = hits(&e);
    let r = preflight(&gw, "/pass", "https://app.example.com");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(hits(&e), before + 1);
}

#[test]
fn actual_requests_get_cors_headers_only_for_allowed_origins() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e, "https://app.example.com"));
    // The target's own CORS headers are replaced, never doubled.
    let path = "/web/_reply?type=application/json&body=%7B%7D&header=access-control-allow-origin:*&header=access-control-expose-headers:x-secret";
    for origin in ["https://app.example.com", "https://shop.example.com"] {
        let r = get_with(&gw.url(path), &[("x-api-key", KEY), ("origin", origin)]);
        assert_eq!(r.status, 200);
        let allow: Vec<_> = r
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .collect();
        assert_eq!(allow, [origin]);
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("x-request-id")
        );
        assert!(varies_on_origin(&r));
    }
    for origin in [
        "https://evil.com",
        "https://shop.example.com.evil.com",
        "null",
    ] {
        let r = get_with(&gw.url(path), &[("x-api-key", KEY), ("origin", origin)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        assert_eq!(r.header("access-control-expose-headers"), None, "{origin}");
        assert!(varies_on_origin(&r));
    }
    // `*` without credentials: the same answer for every origin, so no Vary.
    let r = get_with(&gw.url("/open"), &[("origin", "https://any.where")]);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert!(!varies_on_origin(&r));
}

#[test]
fn the_gateways_own_errors_carry_cors_headers() {
    let e = echo("e", &[]);
    let origin = "https://app.example.com";
    let gw = gateway_with_server("global_policies = [\"web\"]", &config(&e, origin));
    let with_origin = |path: &str, key: bool| {
        let mut headers = vec![("origin", origin)];
        if key {
            headers.push(("x-api-key", KEY));
        }
        get_with(&gw.url(path), &headers)
    };
    let r = with_origin("/api/x", false);
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = with_origin("/nowhere", false);
    assert_error(&r, 404, "route_not_found");
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    for _ in 0..2 {
        assert_eq!(with_origin("/api/x", true).status, 200);
    }
    let r = with_origin("/api/x", true);
    assert_error(&r, 429, "rate_limited");
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
}

fn page(gateway_url: &str) -> String {
    format!(
        r#"<!doctype html><html><body><script>
const report = r => fetch('/report?r=' + encodeURIComponent(r));
fetch('{gateway_url}/api/data', {{
  method: 'PUT',
  credentials: 'include',
  headers: {{ 'x-custom': 'from-page', 'x-api-key': '{KEY}', 'content-type': 'application/json' }},
  body: '{{"a":1}}'
}}).then(r => r.json().then(j => report(['ok', r.status, j.method, j.headers['x-custom'],
    r.headers.get('x-request-id') ? 'id' : 'no-id'].join(':'))))
  .catch(e => report('blocked:' + e.name));
</script></body></html>"#
    )
}

#[test]
fn a_browser_fetch_is_allowed_from_one_origin_and_blocked_from_another() {
    let e = echo("e", &[]);
    let pages = Pages::start();
    let (port, allowed) = (pages.port, pages.origin());
    let gw = gateway(&config(&e, &allowed));
    pages.put("/page", "text/html", page(&gw.url("")));

    // What the page at `url` reports, with the browser closed again.
    let visit = |url: String| {
        let _browser = chromium(&url);
        pages
            .reports
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{url} reported nothing"))
    };
    let before = hits(&e);
    let outcome = visit(format!("{allowed}/page"));
    assert_eq!(outcome, "ok:200:PUT:from-page:id", "allowed origin");
    assert_eq!(
        hits(&e),
        before + 1,
        "one actual request reached the upstream"
    );

    // Same page, another origin (localhost is not 127.0.0.1 to a browser): blocked.
    let outcome = visit(format!("http://localhost:{port}/page"));
    assert_eq!(outcome, "blocked:TypeError", "disallowed origin");
    assert_eq!(
        hits(&e),
        before + 1,
        "the blocked request never reached the upstream"
    );
}
