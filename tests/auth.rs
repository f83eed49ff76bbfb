//! API keys, consumers and ACLs through the real gateway.

mod common;
use common::*;

/// sha256("bob-key-456")
fn sha(key: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

fn config(e: &Echo) -> String {
    format!(
        r#"[upstreams.echo]
targets = ["{addr}"]

[consumers.alice]
api_keys = ["alice-key-123"]
groups = ["gold"]

[consumers.bob]
api_keys = ["{bob}"]
groups = ["silver"]

[policies.keys]
kind = "api_key"
header = "x-api-key"
query = "api_key"

[policies.keys-forwarded]
kind = "api_key"
forward_credentials = true

[policies.gold-only]
kind = "acl"
allow = ["gold"]

[policies.no-silver]
kind = "acl"
deny = ["silver"]

[[routes]]
name = "open"
paths = ["/open"]
upstream = "echo"

[[routes]]
name = "keyed"
paths = ["/keyed"]
upstream = "echo"
policies = ["keys"]

[[routes]]
name = "gold"
paths = ["/gold"]
upstream = "echo"
policies = ["keys", "gold-only"]

[[routes]]
name = "not-silver"
paths = ["/not-silver"]
upstream = "echo"
policies = ["keys", "no-silver"]

[[routes]]
name = "forwarded"
paths = ["/forwarded"]
upstream = "echo"
policies = ["keys-forwarded"]
"#,
        addr = e.addr,
        bob = sha("bob-key-456")
    )
}

#[test]
fn api_keys_identify_consumers_and_are_stripped() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));

    let r = get_with(&gw.url("/keyed/x"), &[("x-api-key", "alice-key-123")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = &r.json()["headers"];
    assert_eq!(h["x-consumer"], "alice");
    assert!(h.get("x-api-key").is_none(), "the key was forwarded: {h}");

    // A key stored as sha256:<hex>.
    let r = get_with(&gw.url("/keyed"), &[("x-api-key", "bob-key-456")]);
    assert_eq!(r.json()["headers"]["x-consumer"], "bob");

    // In the query string: stripped from it, other parameters kept.
    let v = get(&gw.url("/keyed/q?a=1&api_key=alice-key-123&b=2")).json();
    assert_eq!(v["headers"]["x-consumer"], "alice");
    assert_eq!(v["query"], "a=1&b=2");

    // A client cannot claim to be a consumer.
    let r = get_with(
        &gw.url("/keyed"),
        &[("x-api-key", "bob-key-456"), ("x-consumer", "alice")],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "bob");
    let r = get_with(&gw.url("/open"), &[("x-consumer", "alice")]);
    assert!(r.json()["headers"].get("x-consumer").is_none());

    // forward_credentials keeps the key.
    let r = get_with(&gw.url("/forwarded"), &[("x-api-key", "alice-key-123")]);
    assert_eq!(r.json()["headers"]["x-api-key"], "alice-key-123");
}

#[test]
fn missing_or_wrong_keys_are_401() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let r = get(&gw.url("/keyed"));
    assert_error(&r, 401, "unauthorized");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("ApiKey") && challenge.contains("x-api-key"),
        "{challenge}"
    );
    let r = get_with(&gw.url("/keyed"), &[("x-api-key", "not-a-key")]);
    assert_error(&r, 401, "unauthorized");
    assert!(!r.body.contains("not-a-key"));
    // The hash of a stored key is not itself a key.
    let r = get_with(&gw.url("/keyed"), &[("x-api-key", &sha("bob-key-456"))]);
    assert_error(&r, 401, "unauthorized");
    assert_eq!(get(&gw.url("/open")).status, 200);
}

#[test]
fn acl_allows_and_denies_groups() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let alice = [("x-api-key", "alice-key-123")];
    let bob = [("x-api-key", "bob-key-456")];
    assert_eq!(get_with(&gw.url("/gold"), &alice).status, 200);
    let r = get_with(&gw.url("/gold"), &bob);
    assert_error(&r, 403, "forbidden");
    assert!(r.header("www-authenticate").is_none());
    assert_eq!(get_with(&gw.url("/not-silver"), &alice).status, 200);
    assert_error(&get_with(&gw.url("/not-silver"), &bob), 403, "forbidden");
    // No credentials at all: 401 before the ACL.
    assert_error(&get(&gw.url("/gold")), 401, "unauthorized");
}

#[test]
fn global_policies_cover_every_route() {
    let e = echo("e", &[]);
    let gw = gateway_with_server(
        "global_policies = [\"keys\"]",
        &format!(
            "[upstreams.echo]\ntargets = [\"{}\"]\n[consumers.c]\napi_keys = [\"k-1\"]\n[policies.keys]\nkind = \"api_key\"\n[[routes]]\nname = \"r\"\nupstream = \"echo\"\n",
            e.addr
        ),
    );
    assert_error(&get(&gw.url("/anything")), 401, "unauthorized");
    assert_eq!(
        get_with(&gw.url("/anything"), &[("x-api-key", "k-1")]).status,
        200
    );
}
