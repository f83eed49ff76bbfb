//! Reload on SIGHUP: a valid file takes effect without a restart; an invalid one changes nothing.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn route(body: &str) -> String {
    format!("[[routes]]\nname = \"r\"\npaths = [\"/\"]\nrespond = {{ body = \"{body}\" }}\n")
}

fn wait_for_body(gw: &Gateway, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if get(&gw.url("/")).body == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sighup_swaps_routes_and_rejects_bad_files() {
    let mut gw = gateway(&route("one"));
    assert_eq!(get(&gw.url("/")).body, "one");

    gw.rewrite(&route("two"));
    gw.signal("HUP");
    assert!(wait_for_body(&gw, "two"), "reload did not take effect");

    // An invalid file: the process lives on and keeps serving the last good configuration.
    gw.rewrite("[[routes]]\nname = \"r\"\nupstream = \"missing\"\n");
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.alive());
    assert_eq!(get(&gw.url("/")).body, "two");
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    let path = gw.config_path().display().to_string();
    assert!(
        log.lines().any(|l| l.contains("reload rejected")
            && l.contains(&format!("{path}:"))
            && l.contains("unknown upstream `missing`")),
        "no located error in the log:\n{log}"
    );

    // And a fixed file is picked up again.
    gw.rewrite(&route("three"));
    gw.signal("HUP");
    assert!(wait_for_body(&gw, "three"));
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let gw = gateway_with_server("watch = true", &route("first"));
    assert_eq!(get(&gw.url("/")).body, "first");
    gw.rewrite(&route("second"));
    assert!(wait_for_body(&gw, "second"), "the change was not picked up");
    // A broken save changes nothing; the fixed one is picked up.
    gw.rewrite("[[routes]]\nname = ");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(&gw.url("/")).body, "second");
    gw.rewrite(&route("third"));
    assert!(wait_for_body(&gw, "third"));
}

mod upstream_state {
    use super::*;

    const TOKEN: &str = "reload-test-token";

    fn config(admin: u16, targets: &[&str], read_timeout: &str) -> String {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            r#"[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[upstreams.pool]
targets = [{}]
read_timeout = "{read_timeout}"
health_check = {{ kind = "http", path = "/check", interval = "300ms", timeout = "3s", unhealthy = 1, healthy = 1 }}

[[routes]]
name = "r"
paths = ["/"]
upstream = "pool"
"#,
            targets.join(", ")
        )
    }

    fn admin(port: u16, method: &str, path: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        let body = (method == "POST").then_some("");
        request(
            method,
            &format!("http://127.0.0.1:{port}{path}"),
            &[("authorization", &auth)],
            body,
        )
    }

    fn target<'a>(ups: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
        ups["pool"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == addr)
            .unwrap_or_else(|| panic!("no target {addr} in {ups}"))
    }

    /// Editing an upstream rebuilds its pool; the health, drains and readiness of the
    /// targets that stay must survive it, and a target it adds must be checked first.
    #[test]
    fn a_reload_keeps_health_drains_and_readiness() {
        let (a, b) = (echo("a", &[]), echo("b", &[]));
        let dead = format!("127.0.0.1:{}", free_port());
        let port = free_port();
        let gw = gateway(&config(port, &[&a.addr, &b.addr, &dead], "30s"));
        wait_for_port(port);
        wait_until(Duration::from_secs(10), "ready", || {
            admin(port, "GET", "/readyz").status == 200
        });
        let drain = format!("/upstreams/pool/targets/{}/drain", b.addr);
        assert_eq!(admin(port, "POST", &drain).status, 200);
        let ups = admin(port, "GET", "/upstreams").json();
        assert_eq!(target(&ups, &dead)["healthy"], false, "{ups}");

        // One key of the upstream changes: the dead target stays out, b stays drained.
        gw.rewrite(&config(port, &[&a.addr, &b.addr, &dead], "20s"));
        assert_eq!(admin(port, "POST", "/reload").status, 200);
        assert_eq!(admin(port, "GET", "/readyz").status, 200, "readiness kept");
        let counts = spread(&gw.url("/"), 30);
        assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
        let ups = admin(port, "GET", "/upstreams").json();
        assert_eq!(target(&ups, &b.addr)["drained"], true, "{ups}");
        assert_eq!(target(&ups, &dead)["healthy"], false);

        // A new target gets nothing until its first check passes (this one answers slowly).
        let c = echo("c", &["--delay", "800ms"]);
        gw.rewrite(&config(port, &[&a.addr, &b.addr, &dead, &c.addr], "20s"));
        assert_eq!(admin(port, "POST", "/reload").status, 200);
        let counts = spread(&gw.url("/"), 20);
        assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
        assert_eq!(admin(port, "GET", "/readyz").status, 200);
        let ups = admin(port, "GET", "/upstreams").json();
        assert_eq!(target(&ups, &c.addr)["healthy"], false, "{ups}");
        wait_until(Duration::from_secs(10), "the new target's check", || {
            let ups = admin(port, "GET", "/upstreams").json();
            target(&ups, &c.addr)["healthy"] == true
        });
        let counts = spread(&gw.url("/"), 4);
        assert_eq!(counts.get("c"), Some(&2), "{counts:?}");
    }
}
