//! The dashboard in a real browser: headless Chromium (Debian's) driven by npm's playwright-core
//! (tests/js/dashboard.mjs) loads `/ui` from a gateway with traffic flowing. Every route,
//! upstream and target of the config is listed with the state `/upstreams` reports, the charts
//! have data, a drain from the page drains the target, and without the token the page changes
//! nothing. Screenshots (laptop and phone) are left in target/dashboard*.png.

mod common;
use common::node::node_run;
use common::pki::Ca;
use common::*;
use std::time::Duration;

const TOKEN: &str = "dashboard-test-token";

#[test]
fn an_operator_sees_every_route_and_target_and_drains_one_from_the_page() {
    let (a, b, c) = (echo("a", &[]), echo("b", &[]), echo("c", &[]));
    let admin = free_port();
    let ca = Ca::new(&scratch(), "dashboard");
    let cert = ca.server_for_days("soon", "soon.example.com", &["soon.example.com"], 5);
    let tls = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{}\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        free_port(),
        cert.cert.display(),
        cert.key.display()
    );
    let gw = gateway_with_server(
        &tls,
        &format!(
            r#"[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[upstreams.pool]
targets = ["{a}", "{b}"]
health_check = {{ kind = "http", path = "/check", interval = "1s", timeout = "1s" }}

[upstreams.other]
targets = ["{c}"]

[policies.limit]
kind = "rate_limit"
limit = 100000
window = "1s"
key = ["client_ip"]

[[routes]]
name = "api"
paths = ["/api"]
methods = ["GET"]
upstream = "pool"
policies = ["limit"]

[[routes]]
name = "shop"
hosts = ["shop.test"]
upstream = "other"

[[routes]]
name = "checkout"
paths = ["/checkout"]
split = [{{ upstream = "pool", weight = 90 }}, {{ upstream = "other", weight = 10 }}]

[policies.cached]
kind = "cache"

[[routes]]
name = "static"
paths = ["/static"]
strip_prefix = true
upstream = "other"
policies = ["cached"]

[[routes]]
name = "ping"
paths = ["=/ping"]
respond = {{ body = "pong" }}
"#,
            a = a.addr,
            b = b.addr,
            c = c.addr
        ),
    );
    wait_for_port(admin);
    let admin_url = format!("http://127.0.0.1:{admin}");
    wait_until(Duration::from_secs(10), "ready", || {
        get(&format!("{admin_url}/readyz")).status == 200
    });

    // Traffic, until the charts' sampler has taken a step with it.
    for _ in 0..100 {
        assert_eq!(get(&gw.url("/api/x")).status, 200);
        assert_eq!(get(&gw.url("/ping")).status, 200);
    }
    // One miss then three hits.
    for _ in 0..4 {
        let cached = get(&gw.url("/static/_reply?body=logo&header=cache-control:max-age=60"));
        assert_eq!(cached.body, "logo");
    }
    wait_until(Duration::from_secs(12), "a sampled step", || {
        let stats = get(&format!("{admin_url}/stats")).json();
        let slots = stats["routes"]["api"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        slots.iter().any(|s| s["requests"].as_u64() > Some(0))
    });
    let upstreams = get(&format!("{admin_url}/upstreams")).json();
    let reload = request(
        "POST",
        &format!("{admin_url}/reload"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Some(""),
    );
    assert_eq!(reload.status, 200);

    let shots = format!("{}/target", env!("CARGO_MANIFEST_DIR"));
    let out = node_run(
        "dashboard.mjs",
        &[&admin_url, TOKEN, "pool", &b.addr, &shots],
    );
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(seen.get("error").is_none(), "{seen:#}");
    // The one the browser logs is the wrong token's refusal.
    let errors = seen["console_errors"].as_array().unwrap();
    assert!(
        errors.iter().all(|e| e.as_str().unwrap().contains("401")),
        "{seen:#}"
    );

    // Every route, in the file's order, with its rules, policies and where it sends.
    let routes = seen["routes"].as_array().unwrap();
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "shop", "checkout", "static", "ping"]);
    let text = |i: usize| routes[i]["text"].as_str().unwrap();
    for (i, parts) in [
        (
            0,
            &["path /api", "GET", "limit (rate_limit)", "upstream pool"][..],
        ),
        (1, &["host shop.test", "upstream other"][..]),
        (2, &["path /checkout", "pool 90", "other 10"][..]),
        (3, &["path /static", "cached (cache)"][..]),
        (4, &["path =/ping", "responds 200"][..]),
    ] {
        for part in parts {
            assert!(text(i).contains(part), "{part} not in {}", text(i));
        }
    }
    // The charts of the routes with traffic have data; those without have none.
    assert!(routes[0]["requests_points"].as_u64() > Some(0), "{seen:#}");
    assert!(routes[0]["p99_points"].as_u64() > Some(0));
    assert!(routes[4]["requests_points"].as_u64() > Some(0));
    assert_eq!(routes[1]["requests_points"], 0);

    // The reload, and the certificate that ends in five days, marked.
    let reloads = seen["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 1);
    let reload = reloads[0].as_str().unwrap();
    assert!(
        reload.contains("admin") && reload.contains("success") && reload.contains("no changes"),
        "{reload}"
    );
    let certificates = seen["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 1, "{seen:#}");
    assert_eq!(certificates[0]["name"], "soon.example.com");
    assert_eq!(certificates[0]["state"], "warn");
    assert!(certificates[0]["text"].as_str().unwrap().contains("4 days"));

    // Every target of every upstream, with the state /upstreams reports.
    let mut expected = Vec::new();
    for (name, pool) in upstreams.as_object().unwrap() {
        for t in pool["targets"].as_array().unwrap() {
            expected.push(serde_json::json!({
                "upstream": name, "target": t["target"], "healthy": t["healthy"],
                "drained": t["drained"], "breaker": t["breaker"], "inflight": t["inflight"],
            }));
        }
    }
    let mut listed = seen["targets"].as_array().unwrap().clone();
    let key = |v: &serde_json::Value| format!("{}/{}", v["upstream"], v["target"]);
    listed.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(listed, expected);
    assert_eq!(listed.len(), 3);

    // Without the token nothing changed; with it the target drained, and enabled, and drained.
    assert_eq!(seen["drained_without_token"], false);
    assert_eq!(seen["drained_with_wrong_token"], false);
    assert!(
        seen["problem"].as_str().unwrap().contains("refused"),
        "{seen:#}"
    );
    assert_eq!(seen["drained_with_token"], true);
    assert_eq!(seen["drained_after_enable"], false);
    assert_eq!(seen["token_asked"], 1, "the token is asked once");
    assert_eq!(target_state(admin, "pool", &b.addr)["drained"], true);
    let counts = spread(&gw.url("/api/x"), 10);
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");

    // A phone shows the same page without sideways scrolling.
    assert_eq!(seen["phone_routes"], 5);

    // The cache: three hits of four.
    let caches = seen["caches"].as_array().unwrap();
    assert_eq!(caches.len(), 1, "{seen:#}");
    assert!(
        caches[0]
            .as_str()
            .unwrap()
            .contains("hit ratio 75.0 % of 4"),
        "{seen:#}"
    );
    assert!(
        seen["cache_tiers"].as_str().unwrap().contains("memory"),
        "{seen:#}"
    );
    assert!(seen["phone_overflow"].as_i64() <= Some(0), "{seen:#}");
    for shot in ["dashboard.png", "dashboard-phone.png"] {
        let size = std::fs::metadata(format!("{shots}/{shot}")).unwrap().len();
        assert!(size > 10_000, "{shot}: {size} bytes");
    }

    // The page's files come with a policy that lets it load nothing from elsewhere.
    let page = get(&format!("{admin_url}/ui"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|p| p.contains("default-src 'none'") && p.contains("script-src 'self'")));
    assert_eq!(get(&format!("{admin_url}/ui/missing.js")).status, 404);
}
