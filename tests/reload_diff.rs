//! What a reload changes: `POST /reload?dry_run=1` answers it and applies nothing; a real
//! reload logs the same summary and `GET /reloads` keeps it, with refused files' errors.

mod common;
use common::*;
use serde_json::json;

const TOKEN: &str = "diff-test-token";

fn admin(port: u16, method: &str, path: &str, token: bool) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let headers: &[(&str, &str)] = if token {
        &[("authorization", &auth)]
    } else {
        &[]
    };
    let body = (method == "POST").then_some("");
    request(
        method,
        &format!("http://127.0.0.1:{port}{path}"),
        headers,
        body,
    )
}

/// The running file: two pools, three routes, two policies, one consumer.
fn before(port: u16, a: &str, b: &str, c: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[upstreams.pool]
targets = ["{a}", "{b}"]

[upstreams.old]
targets = ["{c}"]

[[routes]]
name = "api"
paths = ["/api"]
upstream = "pool"
policies = ["limit"]

[[routes]]
name = "legacy"
paths = ["/legacy"]
upstream = "old"

[[routes]]
name = "ping"
paths = ["=/ping"]
respond = {{ body = "pong" }}

[policies.limit]
kind = "rate_limit"
limit = 100
window = "1s"
key = ["client_ip"]

[policies.jwt]
kind = "jwt"
algorithms = ["HS256"]
secret = "first-secret-of-32-bytes-long-xx"

[consumers.bob]
groups = ["x"]
"#
    )
}

/// The edit: a target added and one reweighted, a pool and a route replaced, a route's paths,
/// a limit and a secret changed, a policy and a consumer added. `ping` stays as it was.
fn after(port: u16, a: &str, b: &str, c: &str, d: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[upstreams.pool]
targets = ["{a}", {{ addr = "{b}", weight = 3 }}, "{d}"]

[upstreams.new]
targets = ["{c}"]

[[routes]]
name = "api"
paths = ["/api", "/v2"]
upstream = "pool"
policies = ["limit"]

[[routes]]
name = "beta"
paths = ["/beta"]
upstream = "new"

[[routes]]
name = "ping"
paths = ["=/ping"]
respond = {{ body = "pong" }}

[policies.limit]
kind = "rate_limit"
limit = 200
window = "1s"
key = ["client_ip"]

[policies.jwt]
kind = "jwt"
algorithms = ["HS256"]
secret = "second-secret-of-32-bytes-long-x"

[policies.headers]
kind = "security_headers"

[consumers.bob]
groups = ["x"]

[consumers.carol]
groups = ["y"]
"#
    )
}

fn expected(b: &str, d: &str) -> serde_json::Value {
    json!({
        "routes": {"added": ["beta"], "removed": ["legacy"], "changed": {"api": ["paths"]}},
        "upstreams": {"added": ["new"], "removed": ["old"], "changed": {"pool": ["targets"]}},
        "targets": {"added": [format!("pool/{d}")], "removed": [],
                    "changed": {format!("pool/{b}"): ["weight"]}},
        "policies": {"added": ["headers"], "removed": [],
                     "changed": {"jwt": ["secret"], "limit": ["limit"]}},
        "consumers": {"added": ["carol"], "removed": [], "changed": {}},
        "settings": [],
        "restart_needed": [],
    })
}

#[test]
fn a_dry_run_lists_exactly_the_changes_and_applies_nothing() {
    let (a, b, c, d) = (
        echo("a", &[]),
        echo("b", &[]),
        echo("c", &[]),
        echo("d", &[]),
    );
    let port = free_port();
    let gw = gateway(&before(port, &a.addr, &b.addr, &c.addr));
    wait_for_port(port);
    let config = admin(port, "GET", "/config", false).json();
    assert_eq!(get(&gw.url("/legacy")).status, 200);

    gw.rewrite(&after(port, &a.addr, &b.addr, &c.addr, &d.addr));
    let want = expected(&b.addr, &d.addr);

    // Without the token: refused, nothing read or changed.
    let refused = admin(port, "POST", "/reload?dry_run=1", false);
    assert_eq!(refused.status, 401);

    let dry = admin(port, "POST", "/reload?dry_run=1", true);
    assert_eq!(dry.status, 200, "{}", dry.body);
    let dry = dry.json();
    assert_eq!(dry["status"], "valid");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["routes"], 3);
    assert_eq!(dry["changes"], want, "{}", dry["changes"]);
    // The secret's change is named, never its value (nor a digest of it).
    assert!(!dry.to_string().contains("secret-of-32"));
    assert!(!dry.to_string().contains("digest"));

    // Nothing applied: the same configuration, the old route still served, no reload kept.
    assert_eq!(admin(port, "GET", "/config", false).json(), config);
    assert_eq!(get(&gw.url("/legacy")).status, 200);
    assert_eq!(get(&gw.url("/beta")).status, 404);
    let kept = admin(port, "GET", "/reloads", false).json();
    assert_eq!(kept["reloads"], json!([]), "{kept}");
    assert_eq!(
        metric(port, "pylon_config_reloads_total{result=\"success\"}"),
        0.0
    );

    // The real reload: the same changes answered, applied, logged and kept.
    let real = admin(port, "POST", "/reload", true);
    assert_eq!(real.status, 200, "{}", real.body);
    let real = real.json();
    assert_eq!(real["status"], "reloaded");
    assert_eq!(real["changes"], want);
    assert_eq!(get(&gw.url("/beta")).status, 200);
    assert_eq!(get(&gw.url("/legacy")).status, 404);
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload line:\n{log}"));
    for part in [
        "3 routes",
        "routes +beta -legacy ~api(paths)",
        "upstreams +new -old ~pool(targets)",
        &format!("targets +pool/{} ~pool/{}(weight)", d.addr, b.addr),
        "policies +headers ~jwt(secret) ~limit(limit)",
        "consumers +carol",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(!log.contains("secret-of-32"));

    // A second dry run of the same file: nothing left to change.
    let again = admin(port, "POST", "/reload?dry_run=1", true).json();
    let empty = json!({"added": [], "removed": [], "changed": {}});
    for family in ["routes", "upstreams", "targets", "policies", "consumers"] {
        assert_eq!(again["changes"][family], empty, "{again}");
    }

    // A broken file: the dry run says where, and so does the kept record of a real attempt.
    gw.rewrite("[[routes]]\nname = \"r\"\nupstream = \"missing\"\n");
    let path = gw.config_path().display().to_string();
    let broken = admin(port, "POST", "/reload?dry_run=1", true);
    assert_eq!(broken.status, 422);
    let errors = broken.json()["error"]["errors"].to_string();
    assert!(
        errors.contains(&format!("{path}:")) && errors.contains("unknown upstream `missing`"),
        "{errors}"
    );
    assert_eq!(admin(port, "POST", "/reload", true).status, 422);

    // And a reload by signal, of the file that works.
    gw.rewrite(&after(port, &a.addr, &b.addr, &c.addr, &d.addr));
    gw.signal("HUP");
    wait_until(
        std::time::Duration::from_secs(5),
        "the signal's reload",
        || {
            admin(port, "GET", "/reloads", false).json()["reloads"]
                .as_array()
                .is_some_and(|r| r.len() == 3)
        },
    );
    let kept = admin(port, "GET", "/reloads", false).json();
    let kept = kept["reloads"].as_array().unwrap();
    // Newest first.
    assert_eq!(kept[0]["trigger"], "signal");
    assert_eq!(kept[0]["result"], "success");
    assert_eq!(kept[0]["changes"]["routes"], empty);
    assert_eq!(kept[1]["trigger"], "admin");
    assert_eq!(kept[1]["result"], "error");
    assert!(kept[1]["errors"]
        .to_string()
        .contains("unknown upstream `missing`"));
    assert_eq!(kept[2]["result"], "success");
    assert_eq!(kept[2]["routes"], 3);
    assert_eq!(kept[2]["changes"], want);
    assert!(kept[2]["time"].as_str().unwrap().ends_with('Z'));
}
