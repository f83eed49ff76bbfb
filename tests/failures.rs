//! Health checks, timeouts and retries: targets that die, hang, refuse or fail.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn one_route(upstream: &str) -> String {
    format!("{upstream}\n\n[[routes]]\nname = \"r\"\nupstream = \"pool\"\n")
}

/// Wait until `f` holds, polling; false at the deadline.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn killed_target_leaves_rotation_and_returns_after_recovery() {
    let interval = Duration::from_millis(300);
    let a = echo("a", &[]);
    let b = echo("b", &[]);
    let b_addr = b.addr.clone();
    // No retries: a request sent to a dead target would fail, so success means it left rotation.
    let gw = gateway(&one_route(&format!(
        "[upstreams.pool]\ntargets = [\"{}\", \"{}\"]\nretries = 0\nconnect_timeout = \"200ms\"\n\
         health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"300ms\", timeout = \"200ms\", healthy = 1, unhealthy = 1 }}",
        a.addr, b.addr
    )));
    let counts = spread(&gw.url("/"), 20);
    assert_eq!(counts.len(), 2, "{counts:?}");

    drop(b);
    // Within two check intervals the dead target is out of rotation (plus a little scheduling
    // slack for a loaded test machine).
    std::thread::sleep(2 * interval + Duration::from_millis(100));
    for _ in 0..30 {
        let r = get(&gw.url("/"));
        assert_eq!(r.status, 200, "request reached the dead target: {}", r.body);
        assert_eq!(r.server(), "a");
    }

    let _b = echo_on(&b_addr, "b", &[]);
    assert!(
        eventually(10 * interval, || get(&gw.url("/")).server() == "b"),
        "the recovered target never came back"
    );
}

#[test]
fn no_healthy_target_is_503_json() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = gateway(&one_route(&format!(
        "[upstreams.pool]\ntargets = [\"{dead}\"]\n\
         health_check = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"100ms\", healthy = 1, unhealthy = 1 }}"
    )));
    assert!(eventually(Duration::from_secs(3), || get(&gw.url("/"))
        .status
        == 503));
    let r = get(&gw.url("/x"));
    assert_error(&r, 503, "upstream_unavailable");
    // The gateway closes the connection after a proxy failure and says so.
    assert_eq!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close")
    );
    assert!(
        !r.body.contains(&dead),
        "internal address leaked: {}",
        r.body
    );
}

#[test]
fn slow_target_gives_504_after_read_timeout() {
    let slow = echo("slow", &["--delay", "5s"]);
    let gw = gateway(&one_route(&format!(
        "[upstreams.pool]\ntargets = [\"{}\"]\nread_timeout = \"500ms\"\nretries = 0",
        slow.addr
    )));
    let start = Instant::now();
    let r = get(&gw.url("/"));
    let took = start.elapsed();
    assert_error(&r, 504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(450),
        "gave up too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "read_timeout not applied: {took:?}"
    );
}

#[test]
fn refused_connection_without_retries_is_502_json() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = gateway(&one_route(&format!(
        "[upstreams.pool]\ntargets = [\"{dead}\"]\nretries = 0"
    )));
    let r = get(&gw.url("/"));
    assert_error(&r, 502, "bad_gateway");
    assert!(!r.body.contains(&dead));
}

#[test]
fn connect_failure_is_retried_on_another_target() {
    let live = echo("live", &[]);
    let dead = format!("127.0.0.1:{}", free_port());
    // No health check: only the retry can save requests sent to the dead target.
    let gw = gateway(&one_route(&format!(
        "[upstreams.pool]\ntargets = [\"{dead}\", \"{}\"]\nretries = 1",
        live.addr
    )));
    for _ in 0..20 {
        let r = get(&gw.url("/"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.server(), "live");
    }
    // Connect failures are retried for non-idempotent methods too: nothing was sent.
    for _ in 0..6 {
        let r = request("POST", &gw.url("/"), &[], Some("x"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[test]
fn upstream_503_is_retried_only_for_idempotent_methods() {
    let bad = echo("bad", &["--status", "503"]);
    let good = echo("good", &[]);
    let gw = gateway(&one_route(&format!(
        "[upstreams.pool]\ntargets = [\"{}\", \"{}\"]\nretries = 1",
        bad.addr, good.addr
    )));
    for _ in 0..10 {
        let r = get(&gw.url("/"));
        assert_eq!(r.status, 200, "GET not retried: {}", r.body);
    }
    // PUT is idempotent: retried, with its body replayed to the second target.
    for _ in 0..4 {
        let r = request("PUT", &gw.url("/item"), &[], Some("put-body"));
        assert_eq!(r.status, 200, "PUT not retried: {}", r.body);
        assert_eq!(r.json()["body"], "put-body");
    }
    let mut passed_through = 0;
    for _ in 0..10 {
        let r = request("POST", &gw.url("/"), &[], Some("x"));
        if r.status == 503 {
            // The upstream's own answer, not a gateway error.
            assert_eq!(r.server(), "bad");
            passed_through += 1;
        }
    }
    assert!(
        passed_through >= 3,
        "POST must not be retried on 503: {passed_through} of 10"
    );
}
