//! The admin API and metrics, against a real gateway.

mod common;
use common::*;
use std::net::TcpListener;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-123";

fn admin(port: u16, extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n{extra}\n")
}

fn admin_url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn post(url: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request("POST", url, &headers, Some(""))
}

/// The value of the one sample of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_match_the_traffic_sent() {
    let e = echo("e", &[]);
    let port = free_port();
    let gw = gateway(&format!(
        "{}[upstreams.pool]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npaths = [\"/api\"]\nupstream = \"pool\"\n\n[[routes]]\nname = \"ping\"\npaths = [\"=/ping\"]\nmethods = [\"GET\"]\nrespond = {{ body = \"pong\" }}\n",
        admin(port, ""),
        e.addr
    ));
    wait_for_port(port);
    for _ in 0..7 {
        assert_eq!(get(&gw.url("/api/x")).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            request("POST", &gw.url("/api/y"), &[], Some("b")).status,
            200
        );
    }
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/ping")).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/nowhere")).status, 404);
    }
    assert_eq!(request("DELETE", &gw.url("/ping"), &[], None).status, 405);

    let m = get(&admin_url(port, "/metrics"));
    assert_eq!(m.status, 200);
    let t = &m.body;
    let requests = |labels: &[&str]| sample(t, "pylon_requests_total", labels);
    assert_eq!(
        requests(&["route=\"api\"", "method=\"GET\"", "status=\"200\""]),
        Some(7.0)
    );
    assert_eq!(
        requests(&["route=\"api\"", "method=\"POST\"", "status=\"200\""]),
        Some(3.0)
    );
    assert_eq!(
        requests(&["route=\"ping\"", "method=\"GET\"", "status=\"200\""]),
        Some(4.0)
    );
    assert_eq!(
        requests(&["route=\"_none\"", "method=\"GET\"", "status=\"404\""]),
        Some(2.0)
    );
    assert_eq!(
        requests(&["route=\"_none\"", "method=\"DELETE\"", "status=\"405\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            t,
            "pylon_request_duration_seconds_count",
            &["route=\"api\""]
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            t,
            "pylon_upstream_duration_seconds_count",
            &["upstream=\"pool\""]
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(t, "pylon_inflight_requests", &["route=\"api\""]),
        Some(0.0)
    );
    let target = format!("target=\"{}\"", e.addr);
    assert_eq!(
        sample(
            t,
            "pylon_upstream_target_healthy",
            &["upstream=\"pool\"", &target]
        ),
        Some(1.0)
    );
    // Bounded labels: no raw paths.
    assert!(!t.contains("/api/x") && !t.contains("/nowhere"));
}

#[test]
fn mutating_calls_need_the_token() {
    let port = free_port();
    let gw = gateway(&format!(
        "{}[[routes]]\nname = \"r\"\nrespond = {{ body = \"one\" }}\n",
        admin(port, "")
    ));
    wait_for_port(port);
    let r = post(&admin_url(port, "/reload"), None);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert_eq!(
        post(&admin_url(port, "/reload"), Some("wrong-token-123")).status,
        401
    );
    assert_eq!(
        post(&admin_url(port, "/reload"), Some(&TOKEN[..5])).status,
        401
    );
    // Reads need no token.
    assert_eq!(get(&admin_url(port, "/healthz")).status, 200);

    gw.rewrite(&format!(
        "{}[[routes]]\nname = \"r\"\nrespond = {{ body = \"two\" }}\n",
        admin(port, "")
    ));
    let r = post(&admin_url(port, "/reload"), Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["routes"], 1);
    assert_eq!(get(&gw.url("/")).body, "two");

    gw.rewrite(&format!(
        "{}[[routes]]\nname = \"r\"\nupstream = \"nope\"\n",
        admin(port, "")
    ));
    let r = post(&admin_url(port, "/reload"), Some(TOKEN));
    assert_eq!(r.status, 422);
    let errors = r.json()["error"]["errors"].as_array().unwrap().clone();
    assert!(errors
        .iter()
        .any(|e| e.as_str().unwrap().contains("unknown upstream `nope`")));
    assert_eq!(
        get(&gw.url("/")).body,
        "two",
        "a rejected reload changed the config"
    );

    let t = get(&admin_url(port, "/metrics")).body;
    assert_eq!(
        sample(&t, "pylon_config_reloads_total", &["result=\"success\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&t, "pylon_config_reloads_total", &["result=\"error\""]),
        Some(1.0)
    );
}

/// Policies with passwords in their Redis URLs and a client secret: none may show.
const REDIS_PASSWORDS: &str = "\n[policies.rl]\nkind = \"rate_limit\"\nlimit = 10\nwindow = \"1s\"\nscope = \"cluster\"\nredis_url = \"redis://:hunter2@127.0.0.1:9/0\"\n\n[policies.login]\nkind = \"oidc\"\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"web\"\nclient_secret = \"hunter3\"\ncookie_secret = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\nsession_redis = [\"redis://:hunter4@127.0.0.1:9\", \"redis://:hunter4@127.0.0.1:10\"]\n";

#[test]
fn config_is_shown_with_secrets_redacted() {
    let port = free_port();
    let _gw = gateway(&format!(
        "{}[upstreams.pool]\ntargets = [\"127.0.0.1:9\"]\nread_timeout = \"2s\"\n[[routes]]\nname = \"r\"\nupstream = \"pool\"\n{REDIS_PASSWORDS}",
        admin(port, "")
    ));
    wait_for_port(port);
    let r = get(&admin_url(port, "/config"));
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains(TOKEN),
        "the admin token leaked: {}",
        r.body
    );
    let v = r.json();
    assert_eq!(v["admin"]["token"], "<redacted>");
    assert!(!r.body.contains("hunter"), "a password leaked: {}", r.body);
    assert!(r.body.contains("redis://***@127.0.0.1:9/0"), "{}", r.body);
    assert_eq!(v["routes"][0]["name"], "r");
    assert_eq!(v["upstreams"]["pool"]["targets"][0], "127.0.0.1:9");
    assert_eq!(v["upstreams"]["pool"]["read_timeout"], "2s");
    assert_eq!(v["upstreams"]["pool"]["balancer"], "round_robin");
    assert_eq!(post(&admin_url(port, "/config"), Some(TOKEN)).status, 405);
    assert_eq!(get(&admin_url(port, "/nope")).status, 404);
}

#[test]
fn without_a_token_changes_are_refused() {
    let port = free_port();
    let _gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\n[[routes]]\nname = \"r\"\nrespond = {{}}\n"
    ));
    wait_for_port(port);
    let r = post(&admin_url(port, "/reload"), Some("anything"));
    assert_eq!(r.status, 403);
}

#[test]
fn readyz_waits_for_the_first_health_checks() {
    // A target that accepts connections (the kernel completes the handshake) but never answers:
    // the first HTTP check takes its whole timeout.
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blackhole.local_addr().unwrap();
    let port = free_port();
    let gw = gateway(&format!(
        "{}[upstreams.slow]\ntargets = [\"{addr}\"]\nhealth_check = {{ kind = \"http\", interval = \"10s\", timeout = \"4s\", unhealthy = 1 }}\n[[routes]]\nname = \"r\"\nupstream = \"slow\"\n",
        admin(port, "")
    ));
    wait_for_port(port);
    let first = get(&admin_url(port, "/readyz"));
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(first.json()["waiting_for_health_checks"][0], "slow");
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let r = get(&admin_url(port, "/readyz"));
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Checked, and the target is out of rotation.
    let ups = get(&admin_url(port, "/upstreams")).json();
    assert_eq!(ups["slow"]["health_checked"], true);
    assert_eq!(ups["slow"]["targets"][0]["healthy"], false);
    assert_error(&get(&gw.url("/")), 503, "upstream_unavailable");
}

#[test]
fn drain_and_enable_a_target() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let port = free_port();
    let gw = gateway(&format!(
        "{}[upstreams.pool]\ntargets = [\"{}\", \"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"pool\"\n",
        admin(port, ""),
        a.addr,
        b.addr
    ));
    wait_for_port(port);
    let drain = admin_url(port, &format!("/upstreams/pool/targets/{}/drain", b.addr));
    assert_eq!(post(&drain, None).status, 401);
    assert_eq!(post(&drain, Some(TOKEN)).status, 200);
    let counts = spread(&gw.url("/"), 20);
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
    let ups = get(&admin_url(port, "/upstreams")).json();
    let targets = ups["pool"]["targets"].as_array().unwrap();
    assert!(targets
        .iter()
        .any(|t| t["target"] == b.addr.as_str() && t["healthy"] == false));
    // A reload that leaves the pool's definition alone keeps the pool itself (health, drain
    // state, connections): the drained target stays drained.
    gw.rewrite(&format!(
        "{}[upstreams.pool]\ntargets = [\"{}\", \"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"pool\"\n[[routes]]\nname = \"new\"\npaths = [\"=/new\"]\nrespond = {{ body = \"new\" }}\n",
        admin(port, ""),
        a.addr,
        b.addr
    ));
    assert_eq!(post(&admin_url(port, "/reload"), Some(TOKEN)).status, 200);
    assert_eq!(get(&gw.url("/new")).body, "new");
    assert_eq!(spread(&gw.url("/"), 10).get("a"), Some(&10));
    let enable = admin_url(port, &format!("/upstreams/pool/targets/{}/enable", b.addr));
    assert_eq!(post(&enable, Some(TOKEN)).status, 200);
    assert_eq!(spread(&gw.url("/"), 20).get("b"), Some(&10));
    let unknown = admin_url(port, "/upstreams/pool/targets/10.9.9.9:1/drain");
    assert_eq!(post(&unknown, Some(TOKEN)).status, 404);
}
