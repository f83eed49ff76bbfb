//! `ext_authz` against a small authorization service (tests/py/authz.py) and the demo echo.

mod common;
use common::*;

/// Routes in front of `e` checked by the service on `authz_port`: `/api` (consumer and headers
/// from the answer, then an ACL), `/own` (the service's own body on a denial), `/open`
/// (`on_error = "allow"`), `/cached` (decisions kept 30 s), `/body` (the body sent along).
fn gateway_checked(e: &Echo, authz_port: u16) -> (Gateway, u16) {
    let admin = free_port();
    let check = |name: &str, more: &str| {
        format!(
            "[policies.{name}]\nkind = \"ext_authz\"\nupstream = \"authz\"\npath = \"/check\"\nheaders = [\"authorization\"]\nupstream_headers = [\"x-user-id\", \"x-tenant\"]\nconsumer_header = \"x-user-id\"\ntimeout = \"500ms\"\n{more}\n"
        )
    };
    let route = |name: &str, policies: &str| {
        format!("[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nupstream = \"e\"\npolicies = [{policies}]\n\n")
    };
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[upstreams.e]\ntargets = [\"{}\"]\n\n[upstreams.authz]\ntargets = [\"127.0.0.1:{authz_port}\"]\nretries = 0\n\n[consumers.alice]\ngroups = [\"gold\"]\n\n[policies.gold]\nkind = \"acl\"\nallow = [\"gold\"]\n\n{}{}{}{}{}{}{}{}{}{}",
        e.addr,
        check("authz", ""),
        check("own", "pass_body = true"),
        check("open", "on_error = \"allow\""),
        check("cached", "cache_ttl = \"30s\""),
        check("body", "max_body = \"1KiB\""),
        route("api", "\"authz\", \"gold\""),
        route("own", "\"own\""),
        route("open", "\"open\""),
        route("cached", "\"cached\""),
        route("body", "\"body\""),
    ));
    wait_for_port(admin);
    (gw, admin)
}

fn calls(port: u16) -> u64 {
    get(&format!("http://127.0.0.1:{port}/_calls"))
        .body
        .trim()
        .parse()
        .unwrap()
}

fn bearer(token: &str) -> (String, String) {
    ("authorization".into(), format!("Bearer {token}"))
}

fn send(method: &str, url: &str, headers: &[(String, String)], body: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    request(method, url, &headers, body)
}

#[test]
fn the_service_allows_with_headers_and_a_consumer_and_denies_with_its_status() {
    let e = echo("e", &[]);
    let port = free_port();
    let _authz = python_server("authz.py", &[&port.to_string()]);
    let (gw, admin) = gateway_checked(&e, port);

    // Allowed: the answer's headers and consumer go upstream, a forged x-user-id does not.
    let forged = [bearer("alice"), ("x-user-id".into(), "root".into())];
    let ok = send("GET", &gw.url("/api/orders?x=1"), &forged, None);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let up = &ok.json()["headers"];
    assert_eq!(up["x-user-id"], "alice");
    assert_eq!(up["x-tenant"], "t-alice");
    assert_eq!(up["x-consumer"], "alice");
    assert!(up.get("x-secret-internal").is_none());
    // The service saw the method, the path and the chosen headers.
    let asked = get(&format!("http://127.0.0.1:{port}/_last")).json();
    assert_eq!(asked["path"], "/check");
    assert_eq!(asked["headers"]["x-forwarded-uri"], "/api/orders?x=1");
    assert_eq!(asked["headers"]["x-forwarded-method"], "GET");
    assert!(asked["headers"].get("x-user-id").is_none());

    // A consumer the file does not know has no groups: the ACL after it refuses.
    assert_eq!(
        send("GET", &gw.url("/api"), &[bearer("zed")], None).status,
        403
    );

    // Denied with the service's status: the contract's error, its challenge on a 401.
    let forbidden = send("GET", &gw.url("/api"), &[bearer("forbidden")], None);
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "forbidden");
    let anonymous = get(&gw.url("/api"));
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"]["code"], "unauthorized");
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Bearer realm=\"authz\"")
    );
    // Or with its own body.
    let own = get(&gw.url("/own"));
    assert_eq!(
        (own.status, own.body.as_str()),
        (401, r#"{"why":"who are you"}"#)
    );
    assert_eq!(hits(&e), 1);
    assert_eq!(
        metric(
            admin,
            "pylon_auth_failures_total{policy=\"authz\",reason=\"authz_denied\",route=\"api\"}"
        ),
        2.0
    );
}

#[test]
fn decisions_are_cached_and_a_body_can_be_sent_along() {
    let e = echo("e", &[]);
    let port = free_port();
    let _authz = python_server("authz.py", &[&port.to_string()]);
    let (gw, _admin) = gateway_checked(&e, port);
    for _ in 0..10 {
        assert_eq!(
            send("GET", &gw.url("/cached/a"), &[bearer("alice")], None).status,
            200
        );
        assert_eq!(
            send("GET", &gw.url("/cached/a"), &[bearer("forbidden")], None).status,
            403
        );
    }
    assert_eq!(calls(port), 2, "one check per decision");
    // Another path is another question.
    assert_eq!(
        send("GET", &gw.url("/cached/b"), &[bearer("alice")], None).status,
        200
    );
    assert_eq!(calls(port), 3);

    // With the body: the service reads it before the upstream gets anything.
    let ok = send(
        "POST",
        &gw.url("/body"),
        &[bearer("alice")],
        Some(r#"{"ok":true}"#),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body"], r#"{"ok":true}"#);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/_last")).json()["body"],
        r#"{"ok":true}"#
    );
    assert_eq!(
        send(
            "POST",
            &gw.url("/body"),
            &[bearer("alice")],
            Some(r#"{"no":1}"#)
        )
        .status,
        403
    );
    let large = "x".repeat(2000);
    assert_eq!(
        send("POST", &gw.url("/body"), &[bearer("alice")], Some(&large)).status,
        413
    );
    assert_eq!(
        hits(&e),
        12,
        "the denied and the too large never reached it"
    );
}

#[test]
fn an_outage_of_the_service_denies_or_lets_through_as_configured() {
    let e = echo("e", &[]);
    let port = free_port();
    let authz = python_server("authz.py", &[&port.to_string()]);
    let (gw, admin) = gateway_checked(&e, port);
    assert_eq!(
        send("GET", &gw.url("/api"), &[bearer("alice")], None).status,
        200
    );
    drop(authz);
    let denied = send("GET", &gw.url("/api"), &[bearer("alice")], None);
    assert_eq!(denied.status, 503);
    assert_eq!(denied.json()["error"]["code"], "upstream_unavailable");
    // Allowed through, with no consumer and none of the service's headers.
    let open = send(
        "GET",
        &gw.url("/open"),
        &[bearer("alice"), ("x-user-id".into(), "root".into())],
        None,
    );
    assert_eq!(open.status, 200);
    assert!(open.json()["headers"].get("x-consumer").is_none());
    assert!(open.json()["headers"].get("x-user-id").is_none());
    assert_eq!(
        metric(admin, "pylon_auth_failures_total{policy=\"open\",reason=\"authz_unavailable\",route=\"open\"}"),
        1.0
    );
}
