//! `pylon explain` and `GET /explain`: which route a request takes and why, the near misses,
//! over a config with host, wildcard, prefix, exact, regex, method and header routes; and
//! `--expect`, which fails on a wrong expectation.

mod common;
use common::*;
use std::process::Command;

const ROUTES: &str = r#"
[policies.keys]
kind = "api_key"

[upstreams.a]
targets = ["127.0.0.1:9"]

[upstreams.b]
targets = ["127.0.0.1:10"]

[[routes]]
name = "api-v1"
hosts = ["api.example.com"]
paths = ["/v1/"]
upstream = "a"
policies = ["keys"]

[[routes]]
name = "api-admin"
hosts = ["api.example.com"]
paths = ["/v1/admin"]
methods = ["POST"]
upstream = "b"

[[routes]]
name = "wild"
hosts = ["*.example.org"]
paths = ["/"]
upstream = "a"

[[routes]]
name = "health"
paths = ["=/healthz"]
respond = { status = 200 }

[[routes]]
name = "users"
paths = ["~^/users/[0-9]+$"]
methods = ["GET", "PUT"]
upstream = "a"

[[routes]]
name = "canary"
paths = ["/app/"]
headers = { x-canary = "1" }
upstream = "b"

[[routes]]
name = "app"
paths = ["/app/"]
upstream = "a"
strip_prefix = true
"#;

/// (method, url, headers, the route taken or "" for none, a near miss "route: rule" or "")
const TABLE: [(&str, &str, &str, &str, &str); 30] = [
    (
        "GET",
        "http://api.example.com/v1/users",
        "",
        "api-v1",
        "wild: host",
    ),
    (
        "GET",
        "http://api.example.com/v1/admin/x",
        "",
        "api-v1",
        "api-admin: method GET",
    ),
    (
        "POST",
        "http://api.example.com/v1/admin/x",
        "",
        "api-admin",
        "wild: host",
    ),
    (
        "POST",
        "http://API.example.com:8080/v1/admin",
        "",
        "api-admin",
        "",
    ),
    (
        "GET",
        "http://api.example.com/v2/users",
        "",
        "",
        "wild: host",
    ),
    (
        "GET",
        "http://other.example.com/v1/users",
        "",
        "",
        "api-v1: host other.example.com",
    ),
    ("GET", "http://a.example.org/anything", "", "wild", ""),
    ("GET", "http://a.b.example.org/x", "", "wild", ""),
    (
        "GET",
        "http://example.org/x",
        "",
        "",
        "wild: host example.org",
    ),
    ("DELETE", "http://www.example.org/x", "", "wild", ""),
    ("GET", "http://x/healthz", "", "health", ""),
    ("GET", "http://x/healthz/", "", "", ""),
    ("HEAD", "http://x/healthz", "", "health", ""),
    ("GET", "http://x/users/42", "", "users", ""),
    ("PUT", "http://x/users/42", "", "users", ""),
    (
        "DELETE",
        "http://x/users/42",
        "",
        "",
        "users: method DELETE",
    ),
    ("GET", "http://x/users/abc", "", "", ""),
    ("GET", "http://x/users/42/", "", "", ""),
    (
        "GET",
        "http://x/app/page",
        "",
        "app",
        "canary: header x-canary",
    ),
    ("GET", "http://x/app/page", "x-canary: 1", "canary", ""),
    (
        "GET",
        "http://x/app/page",
        "x-canary: 2",
        "app",
        "canary: header x-canary",
    ),
    ("POST", "http://x/app/form", "x-canary: 1", "canary", ""),
    ("GET", "http://x/app", "", "", ""),
    ("GET", "http://x/application", "", "", ""),
    ("GET", "http://x/app/../healthz", "", "health", ""),
    ("GET", "http://x//app//page", "", "app", ""),
    ("GET", "http://a.example.org/app/x", "", "wild", ""),
    (
        "GET",
        "http://api.example.com/app/x",
        "",
        "app",
        "wild: host",
    ),
    ("GET", "http://api.example.com/v1/", "", "api-v1", ""),
    (
        "OPTIONS",
        "http://api.example.com/v1/admin",
        "",
        "api-v1",
        "api-admin: method OPTIONS",
    ),
];

#[test]
fn explain_names_the_route_why_and_the_near_misses() {
    let admin = free_port();
    let _gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{ROUTES}"
    ));
    wait_for_port(admin);
    for (method, url, header, route, near) in TABLE {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("method", method).append_pair("url", url);
        if !header.is_empty() {
            query.append_pair("header", header);
        }
        let answer = get(&format!(
            "http://127.0.0.1:{admin}/explain?{}",
            query.finish()
        ));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let v = answer.json();
        let took = v["route"].as_str().unwrap_or("");
        assert_eq!(took, route, "{method} {url} {header}: {v:#}");
        if !near.is_empty() {
            let (name, rule) = near.split_once(": ").unwrap();
            let found = v["near_misses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["route"] == name && m["failed"].as_str().unwrap().starts_with(rule));
            assert!(found, "{method} {url}: near miss {near} in {v:#}");
        }
    }

    // The chain, the target and the path after rewrite, and a request that matched nothing.
    let v = get(&format!(
        "http://127.0.0.1:{admin}/explain?method=GET&url=http%3A%2F%2Fapi.example.com%2Fv1%2Fx%3Fq%3D1"
    ))
    .json();
    assert_eq!(v["policies"], serde_json::json!(["keys"]));
    assert_eq!(v["target"]["upstream"], "a");
    assert_eq!(v["upstream_path"], "/v1/x?q=1");
    let v = get(&format!(
        "http://127.0.0.1:{admin}/explain?url=http%3A%2F%2Fx%2Fapp%2Fpage%3Fa%3D1"
    ))
    .json();
    assert_eq!(v["upstream_path"], "/page?a=1", "strip_prefix");
    assert_eq!(v["outranked"], serde_json::json!([]));
    let v = get(&format!(
        "http://127.0.0.1:{admin}/explain?url=%2Fapp%2Fx&header=x-canary%3A%201"
    ))
    .json();
    assert_eq!(v["route"], "canary");
    assert_eq!(v["outranked"][0]["route"], "app");
    assert_eq!(
        get(&format!("http://127.0.0.1:{admin}/explain")).status,
        400
    );
}

fn explain(args: &[&str]) -> (bool, String) {
    let out = Command::new(PYLON)
        .arg("explain")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_command_line_explains_and_checks_a_table_of_expectations() {
    let dir = scratch();
    let conf = dir.join("pylon.toml");
    std::fs::write(
        &conf,
        format!("[server]\nlisten = [\"127.0.0.1:9\"]\n{ROUTES}"),
    )
    .unwrap();
    let conf = conf.to_str().unwrap();

    let (ok, text) = explain(&["-c", conf, "GET", "http://api.example.com/v1/admin/x"]);
    assert!(ok, "{text}");
    assert!(text.contains("route: api-v1"), "{text}");
    assert!(
        text.contains("because path /v1/admin/x matches prefix \"/v1/\""),
        "{text}"
    );
    assert!(
        text.contains("near miss: api-admin: method GET is not one of [\"POST\"]"),
        "{text}"
    );
    let (ok, text) = explain(&["-c", conf, "GET", "/app/x", "-H", "x-canary: 1", "--json"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["route"], "canary");

    let mut table = String::new();
    for (method, url, header, route, _) in TABLE {
        let headers = match header.split_once(": ") {
            Some((n, v)) => format!("headers = {{ {n} = \"{v}\" }}\n"),
            None => String::new(),
        };
        table += &format!(
            "[[expect]]\nmethod = \"{method}\"\nurl = \"{url}\"\n{headers}route = \"{route}\"\n\n"
        );
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, &table).unwrap();
    let (ok, text) = explain(&["-c", conf, "--expect", good.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        30,
        "{text}"
    );

    // One wrong expectation: named, and the exit status says so.
    let bad = dir.join("bad.toml");
    let wrong = table.replacen("route = \"health\"", "route = \"users\"", 1);
    std::fs::write(&bad, wrong).unwrap();
    let (ok, text) = explain(&["-c", conf, "--expect", bad.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL GET http://x/healthz -> health, expected users"),
        "{text}"
    );
}
