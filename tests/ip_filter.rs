//! `ip_filter` through the real gateway: IPv4 and IPv6 allow and deny lists on the client
//! address, with a trusted proxy's `x-forwarded-for` believed and a client's own ignored.

mod common;
use common::*;

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

[policies.office]
kind = "ip_filter"
allow = ["10.0.0.0/8", "2001:db8::/32"]
deny = ["10.1.2.3", "2001:db8:bad::/48"]

[policies.blocklist]
kind = "ip_filter"
deny = ["203.0.113.0/24", "2001:db8:dead::/48", "127.0.0.1"]

[[routes]]
name = "office"
paths = ["/office"]
upstream = "pool"
policies = ["keys", "office"]

[[routes]]
name = "public"
paths = ["/public"]
upstream = "pool"
policies = ["blocklist"]
"#,
        addr = e.addr
    )
}

fn from(gw: &Gateway, path: &str, client: &str) -> Resp {
    get_with(
        &gw.url(path),
        &[("x-forwarded-for", client), ("x-api-key", "alice-key")],
    )
}

#[test]
fn allow_and_deny_by_the_client_address_behind_a_trusted_proxy() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway_with_server("trusted_proxies = [\"127.0.0.1/32\"]", &config(&e, admin));
    for (client, status) in [
        ("10.9.9.9", 200),
        ("10.1.2.3", 403),
        ("192.168.1.1", 403),
        ("2001:db8::5", 200),
        ("2001:db8:bad::1", 403),
        ("2001:db9::1", 403),
    ] {
        let r = from(&gw, "/office", client);
        assert_eq!(r.status, status, "/office from {client}: {}", r.body);
        if status == 403 {
            assert_error(&r, 403, "forbidden");
        }
    }
    for (client, status) in [
        ("203.0.113.7", 403),
        ("2001:db8:dead::9", 403),
        ("198.51.100.1", 200),
        ("2001:db8::1", 200),
    ] {
        assert_eq!(
            from(&gw, "/public", client).status,
            status,
            "/public from {client}"
        );
    }
    // Refused before authentication: no key needed to be turned away.
    let r = get_with(&gw.url("/office"), &[("x-forwarded-for", "10.1.2.3")]);
    assert_error(&r, 403, "forbidden");
    let denied = metric(
        admin,
        "pylon_blocked_requests_total{policy=\"office\",reason=\"ip_denied\",route=\"office\"}",
    );
    assert_eq!(denied, 3.0);
    let not_allowed = metric(
        admin,
        "pylon_blocked_requests_total{policy=\"office\",reason=\"ip_not_allowed\",route=\"office\"}",
    );
    assert_eq!(not_allowed, 2.0);
}

#[test]
fn a_clients_own_forwarding_header_is_not_believed() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e, free_port()));
    // The peer is 127.0.0.1: not in the office, on the blocklist, whatever it claims.
    assert_error(&from(&gw, "/office", "10.9.9.9"), 403, "forbidden");
    assert_error(&from(&gw, "/public", "198.51.100.1"), 403, "forbidden");
}
