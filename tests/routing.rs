//! Routing through the real gateway: precedence, strip/rewrite, errors and request plumbing.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn respond_route(name: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\n{extra}\nrespond = {{ status = 200, body = \"{name}\" }}\n"
    )
}

#[test]
fn precedence_host_path_method_header_priority() {
    let routes = [
        respond_route("root", "paths = [\"/\"]"),
        respond_route("api", "paths = [\"/api\"]"),
        respond_route("orders", "paths = [\"/api/orders\"]"),
        respond_route("exact", "paths = [\"=/api/orders/special\"]"),
        respond_route("regex", "paths = [\"~^/api/orders/[0-9]+$\"]"),
        respond_route("host", "hosts = [\"api.example.com\"]\npaths = [\"/\"]"),
        respond_route("wild", "hosts = [\"*.example.org\"]"),
        respond_route("post-only", "paths = [\"/submit\"]\nmethods = [\"POST\"]"),
        respond_route(
            "v2",
            "paths = [\"/api\"]\nheaders = { \"x-api-version\" = \"2\" }",
        ),
        respond_route("boosted", "paths = [\"/boost\"]\npriority = 10"),
        respond_route("longer", "paths = [\"/boost/er\"]"),
    ]
    .concat();
    let gw = gateway(&routes);
    let body = |path: &str, headers: &[(&str, &str)]| {
        let r = get_with(&gw.url(path), headers);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.body
    };
    assert_eq!(body("/", &[]), "root");
    assert_eq!(body("/anything", &[]), "root");
    assert_eq!(body("/api/x", &[]), "api");
    assert_eq!(body("/api/orders/abc", &[]), "orders");
    assert_eq!(body("/api/orders/special", &[]), "exact");
    assert_eq!(body("/api/orders/42", &[]), "regex");
    assert_eq!(
        body("/api/orders/42", &[("host", "API.example.com:80")]),
        "host"
    );
    assert_eq!(body("/x", &[("host", "deep.sub.example.org")]), "wild");
    assert_eq!(body("/x", &[("host", "example.org")]), "root");
    assert_eq!(body("/api/x", &[("x-api-version", "2")]), "v2");
    assert_eq!(body("/api/x", &[("x-api-version", "3")]), "api");
    assert_eq!(body("/boost/er", &[]), "boosted");
    assert_eq!(body("/submit", &[]), "root");
    let r = request("POST", &gw.url("/submit"), &[], Some("x"));
    assert_eq!(r.body, "post-only");
}

#[test]
fn method_not_allowed_when_no_route_takes_the_method() {
    let gw = gateway(&respond_route(
        "delete-only",
        "hosts = [\"strict.test\"]\npaths = [\"/d\"]\nmethods = [\"DELETE\"]",
    ));
    let r = request("DELETE", &gw.url("/d"), &[("host", "strict.test")], None);
    assert_eq!(r.body, "delete-only");
    let r = get_with(&gw.url("/d"), &[("host", "strict.test")]);
    assert_error(&r, 405, "method_not_allowed");
    let r = get_with(&gw.url("/d"), &[("host", "other.test")]);
    assert_error(&r, 404, "route_not_found");
}

#[test]
fn unknown_route_is_404_json() {
    let gw = gateway(&respond_route("only", "paths = [\"=/only\"]"));
    let r = get(&gw.url("/nope"));
    assert_error(&r, 404, "route_not_found");
    let r = get_with(&gw.url("/nope"), &[("x-request-id", "trace-me-1")]);
    assert_error(&r, 404, "route_not_found");
    assert_eq!(r.json()["error"]["request_id"], "trace-me-1");
}

#[test]
fn respond_routes_answer_without_upstream() {
    let gw = gateway(
        "[[routes]]\nname = \"ping\"\npaths = [\"=/ping\"]\nrespond = { status = 201, body = \"pong\", headers = { \"content-type\" = \"text/plain\", \"x-demo\" = \"1\" } }\n",
    );
    let r = get(&gw.url("/ping"));
    assert_eq!(r.status, 201);
    assert_eq!(r.body, "pong");
    assert_eq!(r.header("x-demo"), Some("1"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(32));
}

fn upstream_gateway(e: &Echo, routes: &str) -> Gateway {
    gateway(&format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n\n{routes}",
        e.addr
    ))
}

#[test]
fn strip_prefix_and_rewrite() {
    let e = echo("e", &[]);
    let gw = upstream_gateway(
        &e,
        r#"
[[routes]]
name = "strip"
paths = ["/svc"]
upstream = "echo"
strip_prefix = true

[[routes]]
name = "rewrite"
paths = ["/users"]
upstream = "echo"
rewrite = { pattern = "^/users/(\\d+)$", to = "/v2/accounts/$1" }

[[routes]]
name = "both"
paths = ["/both"]
upstream = "echo"
strip_prefix = true
rewrite = { pattern = "^/(.*)$", to = "/inner/$1" }

[[routes]]
name = "plain"
paths = ["/"]
upstream = "echo"
"#,
    );
    let path_of = |p: &str| {
        let v = get(&gw.url(p)).json();
        (v["path"].as_str().unwrap().to_string(), v["query"].clone())
    };
    assert_eq!(path_of("/svc/orders/1?a=b").0, "/orders/1");
    assert_eq!(path_of("/svc/orders/1?a=b").1, "a=b");
    assert_eq!(path_of("/svc").0, "/");
    assert_eq!(path_of("/users/42").0, "/v2/accounts/42");
    assert_eq!(path_of("/users/abc").0, "/users/abc");
    assert_eq!(path_of("/both/x").0, "/inner/x");
    assert_eq!(path_of("/plain/path").0, "/plain/path");
}

#[test]
fn request_plumbing_headers() {
    let e = echo("e", &[]);
    let gw = gateway(&format!(
        r#"[upstreams.echo]
targets = ["{addr}"]

[[routes]]
name = "keep"
paths = ["/keep"]
upstream = "echo"
preserve_host = true

[[routes]]
name = "default"
paths = ["/"]
upstream = "echo"
"#,
        addr = e.addr
    ));
    let r = get_with(
        &gw.url("/x"),
        &[
            ("host", "api.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("x-request-id", "client-id-7"),
        ],
    );
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    // The client is not a trusted proxy: its forwarding headers are replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["host"], e.addr.as_str());
    assert!(
        h.get("x-private").is_none(),
        "hop-by-hop header forwarded: {h}"
    );
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h["x-request-id"], "client-id-7");
    assert_eq!(r.header("x-request-id"), Some("client-id-7"));

    // W3C trace context: started when absent, continued (with a new parent span) when sent.
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-"), "{tp}");
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get_with(&gw.url("/t"), &[("traceparent", incoming)]);
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(&tp[..36], &incoming[..36]);
    assert_ne!(tp, incoming);

    let r = get_with(&gw.url("/keep"), &[("host", "api.example.com")]);
    assert_eq!(r.json()["headers"]["host"], "api.example.com");

    // A generated id goes upstream and back, the same on both sides.
    let r = get(&gw.url("/y"));
    let sent = r.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sent.len(), 32);
    assert_eq!(r.header("x-request-id"), Some(sent.as_str()));
}

#[test]
fn trusted_proxy_forwarding_is_kept() {
    let e = echo("e", &[]);
    let rest = format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"echo\"\n",
        e.addr
    );
    let gw = gateway_with_server("trusted_proxies = [\"127.0.0.0/8\"]", &rest);
    let r = get_with(
        &gw.url("/"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    );
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[test]
fn h2c_downstream() {
    let e = echo("e", &[]);
    let gw = upstream_gateway(&e, "[[routes]]\nname = \"r\"\nupstream = \"echo\"\n");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            &gw.url("/h2?q=1"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["path"], "/h2");
    assert_eq!(v["query"], "q=1");
}

#[test]
fn websocket_upgrade_is_tunnelled() {
    // Pingora 0.9.1 tears an upgraded tunnel down when the upstream's 101 is read before the
    // request's empty body has gone through its pipe (cloudflare/pingora#946, fix proposed in
    // #947); an upstream that answers at once under CPU load hits it now and then. The short
    // delay keeps this test about Pylon's handling of upgrades; docs/configuration.md records
    // the limitation.
    let e = echo("e", &["--upgrade-delay", "20ms"]);
    let gw = upstream_gateway(&e, "[[routes]]\nname = \"r\"\nupstream = \"echo\"\n");
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"hello through pylon").unwrap();
    let mut buf = [0u8; 19];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("no echo through the tunnel: {e}"));
    assert_eq!(&buf, b"hello through pylon");
}

#[test]
fn request_body_is_forwarded() {
    let e = echo("e", &[]);
    let gw = upstream_gateway(&e, "[[routes]]\nname = \"r\"\nupstream = \"echo\"\n");
    let r = request(
        "POST",
        &gw.url("/submit"),
        &[("content-type", "text/plain")],
        Some("payload-123"),
    );
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body"], "payload-123");
}

#[test]
fn path_is_normalized_before_routing_and_forwarding() {
    let e = echo("e", &[]);
    let gw = upstream_gateway(
        &e,
        r#"
[[routes]]
name = "blocked"
paths = ["=/admin"]
respond = { status = 403, body = "no" }

[[routes]]
name = "rest"
paths = ["/"]
upstream = "echo"
"#,
    );
    for spelling in [
        "/admin",
        "//admin",
        "/x/../admin",
        "/%61dmin",
        "/./admin",
        "/a/%2e%2e/admin",
    ] {
        let r = get(&gw.url(spelling));
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "no"),
            "{spelling} got past the block"
        );
    }
    let v = get(&gw.url("/a//b/./c/../d?q=%2F")).json();
    assert_eq!(v["path"], "/a/b/d");
    assert_eq!(v["query"], "q=%2F");
}
