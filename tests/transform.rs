//! Request and response transforms through the real gateway: headers, query, method and status
//! with template variables, JSON Pointer edits with exact bodies and framing on a reused
//! keep-alive connection, form ⇄ JSON, XML → JSON, bodies left alone, and `max_body`.

mod common;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "a-transform-test-secret-0123456789";

fn config(e: &Echo, admin: u16) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[upstreams.pool]
targets = ["{addr}"]

[consumers.alice]
api_keys = ["alice-key"]

[policies.keys]
kind = "api_key"

[policies.token]
kind = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"

[policies.shape]
kind = "request_transform"
headers = {{ set = {{ "x-who" = "$consumer@$route", "x-id" = "req-$request_id", "x-ip" = "$client_ip", "x-team" = "team:${{header.x-team}}" }}, add = {{ "x-tag" = "gw" }}, remove = ["x-internal"], rename = {{ "x-old" = "x-new" }} }}
query = {{ set = {{ "limit" = "10", "page" = "$query.p" }}, remove = ["debug"], rename = {{ "q" = "search" }} }}
method = "POST"

[policies.claims]
kind = "request_transform"
headers = {{ set = {{ "x-sub" = "$jwt.sub", "x-level" = "$jwt.level" }} }}

[policies.reshape]
kind = "response_transform"
status = 201
headers = {{ set = {{ "x-served-by" = "pylon $route" }}, remove = ["x-echo-server"] }}

[policies.req-json]
kind = "request_transform"
json = {{ set = {{ "/meta/gateway" = "pylon", "/n" = 7 }}, remove = ["/password"], rename = {{ "/userName" = "/user_name" }} }}
max_body = "1KiB"

[policies.resp-json]
kind = "response_transform"
json = {{ set = {{ "/meta/gateway" = "pylon" }}, remove = ["/secret"], rename = {{ "/userName" = "/user_name" }}, wrap = "data" }}
max_body = "2KiB"

[policies.to-json]
kind = "request_transform"
format = "form_to_json"

[policies.to-form]
kind = "request_transform"
format = "json_to_form"

[policies.from-xml]
kind = "response_transform"
format = "xml_to_json"

[[routes]]
name = "shaped"
paths = ["/shaped"]
upstream = "pool"
policies = ["keys", "shape"]

[[routes]]
name = "claims"
paths = ["/claims"]
upstream = "pool"
policies = ["token", "claims"]

[[routes]]
name = "reshaped"
paths = ["/reshaped"]
upstream = "pool"
policies = ["keys", "reshape"]

[[routes]]
name = "req-json"
paths = ["/req-json"]
upstream = "pool"
policies = ["req-json"]

[[routes]]
name = "resp-json"
paths = ["/_reply"]
upstream = "pool"
policies = ["resp-json"]

[[routes]]
name = "to-json"
paths = ["/to-json"]
upstream = "pool"
policies = ["to-json"]

[[routes]]
name = "to-form"
paths = ["/to-form"]
upstream = "pool"
policies = ["to-form"]

[[routes]]
name = "from-xml"
hosts = ["xml.test"]
paths = ["/_reply"]
upstream = "pool"
policies = ["from-xml"]
"#,
        addr = e.addr
    )
}

fn start() -> (Echo, Gateway, u16) {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&config(&e, admin));
    (e, gw, admin)
}

/// `/_reply` on the echo server answering `body` with content type `ty`.
fn reply_path(ty: &str, body: &str, extra: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("type", ty)
        .append_pair("body", body)
        .finish();
    format!("/_reply?{q}{extra}")
}

#[test]
fn headers_query_and_method_with_variables() {
    let (_e, gw, _) = start();
    let r = request(
        "GET",
        &gw.url("/shaped/list?debug=1&q=shoes&p=3&limit=99"),
        &[
            ("x-api-key", "alice-key"),
            ("x-team", "blue"),
            ("x-internal", "secret"),
            ("x-old", "legacy"),
            ("x-tag", "client"),
            ("x-request-id", "abc-123"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let h = &v["headers"];
    assert_eq!(v["method"], "POST");
    assert_eq!(h["x-who"], "alice@shaped");
    assert_eq!(h["x-id"], "req-abc-123");
    assert_eq!(h["x-ip"], "127.0.0.1");
    assert_eq!(h["x-team"], "team:blue");
    assert!(h.get("x-internal").is_none());
    assert!(h.get("x-old").is_none());
    assert_eq!(h["x-new"], "legacy");
    // `add` appends beside the client's value (the echo joins repeated headers).
    assert!(h["x-tag"].as_str().unwrap().contains("gw"), "{h}");
    assert_eq!(v["query"], "search=shoes&p=3&limit=10&page=3");
}

#[test]
fn jwt_claims_as_variables() {
    let (_e, gw, _) = start();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = encode(
        &Header::default(),
        &json!({"sub": "u-42", "level": 3, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let r = get_with(
        &gw.url("/claims"),
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let h = &r.json()["headers"];
    assert_eq!(h["x-sub"], "u-42");
    assert_eq!(h["x-level"], "3");
}

#[test]
fn response_status_and_headers_and_header_edits_on_gateway_errors() {
    let (_e, gw, _) = start();
    let r = get_with(&gw.url("/reshaped"), &[("x-api-key", "alice-key")]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("x-served-by"), Some("pylon reshaped"));
    assert_eq!(r.header("x-echo-server"), None);
    assert_eq!(r.server(), "e");
    // The gateway's own 401 keeps its status and body; header edits still apply.
    let r = get(&gw.url("/reshaped"));
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.header("x-served-by"), Some("pylon reshaped"));
}

#[test]
fn request_json_edits_exact_body_on_a_reused_connection() {
    let (_e, gw, _) = start();
    let mut c = Raw::connect(gw.port);
    for _ in 0..2 {
        let r = c.send(
            "POST",
            "/req-json",
            &[("content-type", "application/json")],
            br#"{"userName":"al","password":"hunter2","keep":[1,2]}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["body"],
            r#"{"keep":[1,2],"user_name":"al","meta":{"gateway":"pylon"},"n":7}"#
        );
        // Edited before the upstream: sent with its exact length, not chunked.
        let edited = v["body"].as_str().unwrap().len().to_string();
        assert_eq!(v["headers"]["content-length"], edited.as_str());
        assert!(v["headers"].get("transfer-encoding").is_none());
    }
    // The same connection carries a plain request next.
    let r = c.send("GET", "/req-json/next", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/req-json/next");
}

#[test]
fn response_json_edits_exact_body_on_a_reused_connection() {
    let (_e, gw, _) = start();
    let body = r#"{"userName":"al","secret":"s","n":1}"#;
    let mut c = Raw::connect(gw.port);
    for _ in 0..2 {
        let r = c.send("GET", &reply_path("application/json", body, ""), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            r#"{"data":{"n":1,"user_name":"al","meta":{"gateway":"pylon"}}}"#
        );
        assert!(r.chunked, "the edited body is streamed");
        assert_eq!(r.header("content-length"), None);
    }
    // A gzipped body is decoded first, and goes out plain.
    let r = c.send(
        "GET",
        &reply_path("application/json", body, "&gzip=1"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.json()["data"]["user_name"], "al");
    let r = c.send("GET", "/other", &[], b"");
    assert_eq!(r.status, 404, "the connection is still in step");
}

#[test]
fn form_and_json_conversions() {
    let (_e, gw, _) = start();
    let r = request(
        "POST",
        &gw.url("/to-json"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("name=Al+B&tag=a&tag=b"),
    );
    let v = r.json();
    assert_eq!(v["headers"]["content-type"], "application/json");
    assert_eq!(v["body"], r#"{"name":"Al B","tag":["a","b"]}"#);

    let r = request(
        "POST",
        &gw.url("/to-form"),
        &[("content-type", "application/json")],
        Some(r#"{"name":"Al B","n":2,"tag":["a","b"]}"#),
    );
    let v = r.json();
    assert_eq!(
        v["headers"]["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(v["body"], "name=Al+B&n=2&tag=a&tag=b");
}

#[test]
fn xml_responses_become_json() {
    let (_e, gw, _) = start();
    let xml = r#"<?xml version="1.0"?><user id="7"><name>Al &amp; B</name><tag>a</tag><tag>b</tag></user>"#;
    let r = get_with(
        &gw.url(&reply_path("application/xml", xml, "")),
        &[("host", "xml.test")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"user": {"@id": "7", "name": "Al & B", "tag": ["a", "b"]}})
    );
}

#[test]
fn bodies_the_edits_cannot_read_pass_untouched_and_are_counted() {
    let (_e, gw, admin) = start();
    let series = |reason: &str| {
        format!("pylon_body_transforms_skipped_total{{policy=\"resp-json\",reason=\"{reason}\"}}")
    };
    let before = metric(admin, &series("invalid"));
    let r = get(&gw.url(&reply_path("application/json", "{not json", "")));
    assert_eq!(r.body, "{not json");
    assert_eq!(metric(admin, &series("invalid")), before + 1.0);
    let r = get(&gw.url(&reply_path("text/plain", "plain text", "")));
    assert_eq!(r.body, "plain text");
    assert_eq!(r.header("content-length"), Some("10"), "not even reframed");
    assert!(metric(admin, &series("content_type")) >= 1.0);
    // A request body of another type goes through as it came.
    let r = request(
        "POST",
        &gw.url("/req-json"),
        &[("content-type", "text/plain")],
        Some(r#"{"password":"x"}"#),
    );
    assert_eq!(r.json()["body"], r#"{"password":"x"}"#);
}

#[test]
fn max_body_on_both_sides() {
    let (e, gw, _) = start();
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let before = hits(&e);
    let r = request(
        "POST",
        &gw.url("/req-json"),
        &[("content-type", "application/json")],
        Some(&big),
    );
    assert_error(&r, 413, "payload_too_large");
    assert_eq!(hits(&e), before, "refused before the upstream saw it");
    // Beyond max_body on the way back: a 502, not a truncated body.
    let r = get(&gw.url(&reply_path("application/json", &"x".repeat(3000), "")));
    assert_error(&r, 502, "bad_gateway");
}
