//! `grpc_transcode`: JSON clients in front of a Python `grpcio` server (tests/py/shelf_server.py),
//! the policy reading a descriptor set protoc builds from tests/py/shelf.proto in the test,
//! with its `google.api.http` rules.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

/// The shelf service on a free port, once it serves.
fn shelf_server() -> (Proc, u16) {
    let port = free_port();
    (python_server("shelf_server.py", &[&port.to_string()]), port)
}

/// The descriptor set of shelf.proto with its imports, as `protoc --include_imports
/// --descriptor_set_out` writes it.
fn descriptor_set() -> String {
    let out = scratch().join("shelf.pb");
    let status = python("shelf_stubs.py")
        .arg(&out)
        .status()
        .expect("python3");
    assert!(status.success(), "protoc failed");
    out.display().to_string()
}

/// A gateway with a `shelf` route to `port` through the policy, and `extra` settings for it.
fn gateway_to(port: u16, extra: &str) -> Gateway {
    gateway_with_route(port, extra, "")
}

fn gateway_with_route(port: u16, extra: &str, route: &str) -> Gateway {
    gateway(&format!(
        r#"[upstreams.shelf]
targets = ["127.0.0.1:{port}"]
h2 = true

[policies.json]
kind = "grpc_transcode"
descriptor = "{descriptor}"
services = ["shelf.v1.Shelf"]
{extra}

[[routes]]
name = "shelf"
upstream = "shelf"
policies = ["json"]
{route}
"#,
        descriptor = descriptor_set()
    ))
}

fn json_of(resp: &Resp) -> Value {
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()
}

#[test]
fn unary_calls_are_bound_by_path_query_and_body() {
    let (_server, port) = shelf_server();
    let gw = gateway_to(port, "");
    // Path variables and query parameters, by the field's type: an int64 (as a string in
    // proto3 JSON), a repeated string, an enum by name, a nested message field, a bool.
    let got = json_of(&get(&gw.url(
        "/v1/shelves/s%201/items/42?view=full&tags=a&tags=b&kind=BOOK&dims.width=3&fragile=true",
    )));
    assert_eq!(got["shelf"], "s 1");
    assert_eq!(got["id"], "42");
    assert_eq!(got["title"], "view=full");
    assert_eq!(got["tags"], json!(["a", "b"]));
    assert_eq!(got["kind"], "BOOK");
    assert_eq!(got["dims"], json!({"width": 3}));
    assert_eq!(got["fragile"], true);
    // An additional binding of the same method.
    assert_eq!(json_of(&get(&gw.url("/v1/items/7")))["id"], "7");
    // `body: "item"`: the body is one field; the path fills another. Client headers reach the
    // server as metadata.
    let created = request(
        "POST",
        &gw.url("/v1/shelves/s2/items"),
        &[("x-tenant", "acme"), ("content-type", "application/json")],
        Some(r#"{"title":"t","tags":["x"],"kind":"RECORD","dims":{"height":2}}"#),
    );
    let created = json_of(&created);
    assert_eq!(created["shelf"], "s2");
    assert_eq!(created["id"], "1");
    assert_eq!(created["title"], "t");
    assert_eq!(created["kind"], "RECORD");
    assert_eq!(created["dims"], json!({"height": 2}));
    assert!(
        created["note"]
            .as_str()
            .unwrap()
            .starts_with("tenant=acme;"),
        "{created}"
    );
    // A method with no rule has the default binding, the whole message as the body (field
    // names as declared or in lowerCamelCase).
    let echoed = request(
        "POST",
        &gw.url("/shelf.v1.Shelf/Echo"),
        &[],
        Some(r#"{"title":"hi","id":"5","tags":["p","q"]}"#),
    );
    assert_eq!(
        json_of(&echoed),
        json!({"title": "hi", "id": "5", "tags": ["p", "q"]})
    );
    // A multi-segment variable, a custom verb and `response_body`.
    let title = json_of(&get(&gw.url("/v1/shelves/s1/titles/9:read")));
    assert_eq!(title, json!("title of shelves/s1/9"));
}

#[test]
fn a_server_stream_is_one_json_array_and_a_failed_stream_is_no_200() {
    let (_server, port) = shelf_server();
    let gw = gateway_to(port, "");
    let items = json_of(&get(&gw.url("/v1/shelves/s1/items?count=3")));
    let titles: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["item 0", "item 1", "item 2"]);
    assert_eq!(
        json_of(&get(&gw.url("/v1/shelves/s1/items?count=0"))),
        json!([])
    );
    // Two messages, then ABORTED: the client gets the status, not a 200 with half a list.
    let failed = get(&gw.url("/v1/shelves/s1/items?count=5&fail_after=2"));
    assert_error(&failed, 409, "aborted");
    assert_eq!(failed.json()["error"]["message"], "stopped after 2 items");
}

#[test]
fn errors_are_the_contracts_json_with_the_status_mapped() {
    let (_server, port) = shelf_server();
    let gw = gateway_to(port, "");
    // The target's status and message (percent-decoded from grpc-message).
    let missing = get(&gw.url("/v1/shelves/s1/items/404"));
    assert_error(&missing, 404, "not_found");
    assert_eq!(
        missing.json()["error"]["message"],
        "item 404 is not on shelf s1 \u{2014} n\u{fc}ll"
    );
    assert_error(
        &get(&gw.url("/v1/shelves/s1/items/503")),
        503,
        "unavailable",
    );
    // What the client sent that does not fit: a bad number, an unknown parameter, bad JSON,
    // a field the message does not have.
    assert_error(
        &get(&gw.url("/v1/shelves/s1/items/abc")),
        400,
        "bad_request",
    );
    let unknown = get(&gw.url("/v1/shelves/s1/items/1?colour=red"));
    assert_error(&unknown, 400, "bad_request");
    assert!(unknown.body.contains("colour"), "{}", unknown.body);
    let post = |body: &str| request("POST", &gw.url("/shelf.v1.Shelf/Echo"), &[], Some(body));
    assert_error(&post("{not json"), 400, "bad_request");
    assert_error(&post(r#"{"colour":"red"}"#), 400, "bad_request");
    assert_error(&post(r#"{"fragile":"yes"}"#), 400, "bad_request");
    // No binding: neither the path nor the method; client streaming is not offered.
    assert_error(&get(&gw.url("/v1/nothing")), 404, "route_not_found");
    let wrong_method = request("DELETE", &gw.url("/v1/items/7"), &[], None);
    assert_error(&wrong_method, 404, "route_not_found");
    assert_error(
        &request("POST", &gw.url("/shelf.v1.Shelf/Upload"), &[], Some("{}")),
        404,
        "route_not_found",
    );
    // Nothing listens: the gateway's own 502.
    drop(_server);
    wait_until(std::time::Duration::from_secs(5), "the server gone", || {
        !listening(port)
    });
    assert_error(&get(&gw.url("/v1/items/7")), 502, "bad_gateway");
}

#[test]
fn bodies_past_one_mib_go_through_up_to_max_body() {
    let (_server, port) = shelf_server();
    let gw = gateway_to(port, "max_body = \"3MiB\"");
    let title = "x".repeat(2 << 20);
    let body = json!({"title": title}).to_string();
    let echoed = request("POST", &gw.url("/shelf.v1.Shelf/Echo"), &[], Some(&body));
    assert_eq!(
        json_of(&echoed)["title"].as_str().map(str::len),
        Some(2 << 20)
    );
    let over = json!({"title": "x".repeat(4 << 20)}).to_string();
    let refused = request("POST", &gw.url("/shelf.v1.Shelf/Echo"), &[], Some(&over));
    assert_error(&refused, 413, "payload_too_large");
}

#[test]
fn a_bad_descriptor_or_service_is_a_config_error_at_its_policy() {
    let descriptor = descriptor_set();
    for (descriptor, service, words) in [
        (
            "/nonexistent.pb",
            "shelf.v1.Shelf",
            "cannot read descriptor set",
        ),
        (
            descriptor.as_str(),
            "shelf.v1.Nope",
            "`shelf.v1.Nope` is not in",
        ),
    ] {
        let path = scratch().join("bad.toml");
        let text = format!(
            "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nh2 = true\n\n[policies.json]\nkind = \"grpc_transcode\"\ndescriptor = \"{descriptor}\"\nservices = [\"{service}\"]\n"
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(PYLON)
            .args(["-t", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!("{}:5:1:", path.display())) && stderr.contains(words),
            "{stderr}"
        );
    }
}

#[test]
fn the_route_timeout_reaches_the_server_as_the_time_left() {
    let (_server, port) = shelf_server();
    let gw = gateway_with_route(port, "", "timeout = \"5s\"");
    let got = json_of(&get(&gw.url("/v1/items/7")));
    let note = got["note"].as_str().unwrap();
    let left: i64 = note.rsplit("left_ms=").next().unwrap().parse().unwrap();
    assert!((3000..=5000).contains(&left), "{note}");
}
