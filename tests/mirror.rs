//! A route's `mirror` over real upstreams: its share of requests, bodies intact with the
//! shadow's `Host`, oversize bodies skipped, and a slow shadow that the client never waits for.

mod common;
use common::recorder::Recorder;
use common::*;
use std::time::{Duration, Instant};

/// Route `m` to `primary` mirroring to `shadow` with `mirror` settings (TOML inline table
/// keys), and route `plain` to `primary` without; the admin port.
fn mirrored(primary: &Echo, shadow: &str, mirror: &str) -> (Gateway, u16) {
    let admin = free_port();
    let gw = gateway_with_server(
        "max_connections_per_ip = 5000\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[upstreams.primary]\ntargets = [\"{}\"]\n\n[upstreams.shadow]\ntargets = [\"{shadow}\"]\nretries = 0\n\n[[routes]]\nname = \"m\"\npaths = [\"/m\"]\nupstream = \"primary\"\nmirror = {{ upstream = \"shadow\", {mirror} }}\n\n[[routes]]\nname = \"plain\"\npaths = [\"/plain\"]\nupstream = \"primary\"\n",
            primary.addr
        ),
    );
    wait_for_port(admin);
    (gw, admin)
}

fn mirror_metric(admin: u16, result: &str) -> f64 {
    metric(
        admin,
        &format!("pylon_mirror_requests_total{{result=\"{result}\",route=\"m\"}}"),
    )
}

#[test]
fn a_tenth_of_the_requests_reach_the_shadow_with_their_bodies_intact() {
    let primary = echo("primary", &[]);
    let shadow = Recorder::start();
    let (gw, admin) = mirrored(&primary, &shadow.addr, "percent = 10, max_body = \"64KiB\"");
    let body = |i: usize| format!("body-{i:04}-{}-end", "x".repeat(3000));
    for i in 0..1000 {
        let resp = request("POST", &gw.url(&format!("/m/{i}")), &[], Some(&body(i)));
        assert_eq!(resp.status, 200);
        // The primary got the body, whatever the mirror does.
        assert!(resp.body.contains(&body(i)));
    }
    assert_eq!(hits(&primary), 1000);
    wait_until(Duration::from_secs(5), "the copies", || {
        shadow.received().matches("x-pylon-mirror: 1").count() >= 100
    });
    std::thread::sleep(Duration::from_millis(300));
    let received = shadow.received();
    let copies = received.matches("x-pylon-mirror: 1").count();
    assert_eq!(copies, 100, "10% of 1,000, exactly");
    // Every copy's body arrived whole, for the path it was sent to.
    let whole = (0..1000)
        .filter(|i| received.contains(&format!("/m/{i} ")) && received.contains(&body(*i)))
        .count();
    assert_eq!(whole, 100);
    // The shadow's Host, not the client's.
    assert_eq!(
        received.matches(&format!("host: {}", shadow.addr)).count()
            + received.matches(&format!("Host: {}", shadow.addr)).count(),
        100
    );
    assert_eq!(mirror_metric(admin, "sent"), 100.0);
    assert_eq!(mirror_metric(admin, "skipped_sample"), 900.0);
    assert_eq!(mirror_metric(admin, "error"), 0.0);
}

#[test]
fn a_body_over_max_body_is_not_mirrored_and_is_counted() {
    let primary = echo("primary", &[]);
    let shadow = Recorder::start();
    let (gw, admin) = mirrored(&primary, &shadow.addr, "percent = 100, max_body = \"1KiB\"");
    for _ in 0..10 {
        let resp = request("POST", &gw.url("/m"), &[], Some(&"y".repeat(2000)));
        assert_eq!(resp.status, 200);
        assert_eq!(get(&gw.url("/m/small")).status, 200);
    }
    wait_until(Duration::from_secs(5), "the small copies", || {
        mirror_metric(admin, "sent") == 10.0
    });
    assert_eq!(mirror_metric(admin, "skipped_body"), 10.0);
    std::thread::sleep(Duration::from_millis(300));
    let received = shadow.received();
    assert_eq!(received.matches("x-pylon-mirror: 1").count(), 10);
    assert!(!received.contains("yyyy"));
}

/// The 99th percentile of `n` sequential requests to `url` on one kept-alive connection.
fn p99(url: &str, n: usize) -> Duration {
    let agent = agent();
    let mut took: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let resp = agent.get(url).call().unwrap();
            assert_eq!(resp.status(), 200);
            start.elapsed()
        })
        .collect();
    took.sort();
    took[n * 99 / 100]
}

#[test]
fn a_shadow_that_takes_two_seconds_does_not_slow_the_client() {
    let primary = echo("primary", &[]);
    let shadow = echo("shadow", &["--delay", "2s"]);
    let (gw, admin) = mirrored(
        &primary,
        &shadow.addr,
        "percent = 100, timeout = \"3s\", max_inflight = 50, compare = true",
    );
    let without = p99(&gw.url("/plain"), 300);
    let with = p99(&gw.url("/m"), 300);
    println!(
        "p99 of 300 requests on one connection: {without:?} without the mirror, {with:?} with it"
    );
    assert!(
        with < without * 3 + Duration::from_millis(30) && with < Duration::from_millis(500),
        "{with:?} against {without:?}"
    );
    // 50 copies out at once at most: the rest were dropped, and counted.
    assert_eq!(
        mirror_metric(admin, "sent") + mirror_metric(admin, "dropped"),
        300.0
    );
    assert!(mirror_metric(admin, "dropped") >= 200.0);
    // The copies sent are answered by the slow shadow, the same class as the primary's.
    wait_until(Duration::from_secs(5), "the shadow's answers", || {
        hits(&shadow) >= mirror_metric(admin, "sent") as u64
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mirror_metric(admin, "mismatch"), 0.0);
    assert_eq!(mirror_metric(admin, "error"), 0.0);
}

#[test]
fn a_shadow_answering_another_class_counts_as_a_mismatch() {
    let primary = echo("primary", &[]);
    let shadow = echo("shadow", &["--status", "500"]);
    let (gw, admin) = mirrored(&primary, &shadow.addr, "percent = 100, compare = true");
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/m")).status, 200);
    }
    wait_until(Duration::from_secs(5), "the comparisons", || {
        mirror_metric(admin, "mismatch") == 20.0
    });
}

#[test]
fn a_mirror_the_gateway_cannot_build_is_refused_with_its_place() {
    let dir = scratch();
    for (route, says) in [
        (
            "upstream = \"primary\"\nmirror = { upstream = \"nope\" }",
            "mirrors to unknown upstream `nope`",
        ),
        (
            "respond = { body = \"x\" }\nmirror = { upstream = \"primary\" }",
            "copies what goes to an `upstream` or `split`",
        ),
        (
            "upstream = \"primary\"\nmirror = { upstream = \"primary\", percent = 120 }",
            "`mirror.percent` is 0 to 100",
        ),
    ] {
        let path = dir.join("pylon.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[upstreams.primary]\ntargets = [\"127.0.0.1:2\"]\n\n[[routes]]\nname = \"m\"\n{route}\n"
        );
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(PYLON)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{route} was taken");
        assert!(
            err.contains(says) && err.contains("pylon.toml:"),
            "{route}: {err}"
        );
    }
}
