//! Aggregation routes through the real gateway: parts over live upstreams, merged under their
//! keys, with JWT claims, path groups and query values in their paths; a slow optional part
//! cut at its timeout; failed required parts; and the route's auth and transforms around it.

mod common;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "an-aggregate-test-secret-0123456789";

struct Setup {
    _upstreams: Vec<Echo>,
    gw: Gateway,
    admin: u16,
}

fn start() -> Setup {
    let users = echo("users", &[]);
    let orders = echo("orders", &[]);
    let slow = echo("slow", &["--delay", "1s"]);
    let broken = echo("broken", &["--status", "500"]);
    let admin = free_port();
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[upstreams.users]
targets = ["{users}"]

[upstreams.orders]
targets = ["{orders}"]

[upstreams.slow]
targets = ["{slow}"]

[upstreams.broken]
targets = ["{broken}"]
retries = 0

[consumers.alice]
jwt_subject = "u-42"

[policies.token]
kind = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
consumer_claim = "sub"

[policies.stamp]
kind = "response_transform"
json = {{ set = {{ "/gateway" = "pylon" }} }}
headers = {{ set = {{ "x-route" = "$route" }} }}

[[routes]]
name = "dash"
paths = ["~^/dash/(?P<team>[a-z]+)$"]
policies = ["token", "stamp"]
aggregate = {{ timeout = "3s", forward_headers = ["accept-language"], parts = [
  {{ key = "user", upstream = "users", path = "/users/{{jwt.sub}}?team={{path.team}}" }},
  {{ key = "orders", upstream = "orders", path = "/orders?user={{jwt.sub}}&since={{query.since}}", optional = true, timeout = "500ms" }},
] }}

[[routes]]
name = "slow-dash"
paths = ["=/slow-dash"]
policies = ["token"]
aggregate = {{ parts = [
  {{ key = "user", upstream = "users", path = "/users/{{jwt.sub}}" }},
  {{ key = "late", upstream = "slow", path = "/late", optional = true, timeout = "300ms" }},
] }}

[[routes]]
name = "broken-dash"
paths = ["=/broken-dash"]
policies = ["token"]
aggregate = {{ parts = [
  {{ key = "user", upstream = "users", path = "/users/{{jwt.sub}}" }},
  {{ key = "bad", upstream = "broken", path = "/bad" }},
] }}

[[routes]]
name = "late-dash"
paths = ["=/late-dash"]
policies = ["token"]
aggregate = {{ timeout = "300ms", parts = [
  {{ key = "late", upstream = "slow", path = "/late" }},
] }}
"#,
        users = users.addr,
        orders = orders.addr,
        slow = slow.addr,
        broken = broken.addr,
    );
    let gw = gateway(&config);
    Setup {
        _upstreams: vec![users, orders, slow, broken],
        gw,
        admin,
    }
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let jwt = encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {jwt}")
}

#[test]
fn parts_are_merged_with_claims_path_groups_and_query_substituted() {
    let s = start();
    let auth = token("u-42");
    let before = metric(
        s.admin,
        "pylon_upstream_duration_seconds_count{upstream=\"users\"}",
    );
    let r = get_with(
        &s.gw.url("/dash/blue?since=2026-01-01"),
        &[
            ("authorization", &auth),
            ("x-request-id", "agg-1"),
            ("accept-language", "de"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-pylon-partial"), None);
    assert_eq!(r.header("x-route"), Some("dash"));
    let v = r.json();
    let user = &v["user"];
    assert_eq!(user["server"], "users");
    assert_eq!(user["path"], "/users/u-42");
    assert_eq!(user["query"], "team=blue");
    assert_eq!(v["orders"]["server"], "orders");
    assert_eq!(v["orders"]["query"], "user=u-42&since=2026-01-01");
    assert_eq!(
        v["gateway"], "pylon",
        "the route's response transform applies"
    );
    assert!(v.get("_errors").is_none());
    // What every proxied request carries, and the headers the aggregate forwards; never the
    // client's credentials.
    let h = &user["headers"];
    assert_eq!(h["x-request-id"], "agg-1");
    assert_eq!(h["x-consumer"], "alice");
    assert!(h["traceparent"]
        .as_str()
        .is_some_and(|t| t.starts_with("00-")));
    assert_eq!(h["accept-language"], "de");
    assert!(h.get("authorization").is_none());
    // The same pools as proxied requests: their attempts are observed.
    let after = metric(
        s.admin,
        "pylon_upstream_duration_seconds_count{upstream=\"users\"}",
    );
    assert_eq!(after, before + 1.0);
    // The route's auth applies.
    assert_error(&get(&s.gw.url("/dash/blue")), 401, "unauthorized");
}

#[test]
fn a_slow_optional_part_is_cut_at_its_timeout() {
    let s = start();
    let started = Instant::now();
    let r = get_with(
        &s.gw.url("/slow-dash"),
        &[("authorization", &token("u-42"))],
    );
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(took < Duration::from_millis(900), "answered in {took:?}");
    assert_eq!(r.header("x-pylon-partial"), Some("true"));
    let v = r.json();
    assert_eq!(v["user"]["path"], "/users/u-42");
    assert_eq!(v["late"], serde_json::Value::Null);
    assert_eq!(v["_errors"], json!([{"part": "late", "error": "timeout"}]));
}

#[test]
fn failed_required_parts_fail_the_request() {
    let s = start();
    let auth = token("u-42");
    let r = get_with(&s.gw.url("/broken-dash"), &[("authorization", &auth)]);
    assert_error(&r, 502, "bad_gateway");
    // The request id is random hex: it may well contain "500" itself.
    let mut error = r.json();
    error["error"]["request_id"] = json!("");
    assert!(
        !error.to_string().contains("500"),
        "no upstream detail leaks: {}",
        r.body
    );
    let started = Instant::now();
    let r = get_with(&s.gw.url("/late-dash"), &[("authorization", &auth)]);
    assert_error(&r, 504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(900));
}
