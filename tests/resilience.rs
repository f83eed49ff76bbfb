//! Fault tolerance against real upstreams: circuit breakers and outlier ejection, fallbacks,
//! safe retries and their budget, `max_inflight`, slow start, drains.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn admin_section() -> (u16, String) {
    let admin = free_port();
    (admin, format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"))
}

fn targets(echos: &[&Echo]) -> String {
    let list: Vec<String> = echos.iter().map(|e| format!("\"{}\"", e.addr)).collect();
    format!("targets = [{}]", list.join(", "))
}

fn status_file(name: &str) -> std::path::PathBuf {
    scratch().join(name)
}

#[test]
fn a_killed_target_is_ejected_then_probed_back_and_ramped_up() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let mut c = echo("c", &[]);
    let c_addr = c.addr.clone();
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n{}\nretries = 1\nslow_start = \"3s\"\n\
         circuit_breaker = {{ failures = 2, open_for = \"1s\", half_open_requests = 1 }}\n\
         [[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        targets(&[&a, &b, &c])
    ));
    wait_for_port(admin);
    // Steady load from four clients, counting what they see.
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match get(&gw.url("/")).status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(c.proc);
        wait_until(Duration::from_secs(5), "breaker opens", || {
            target_state(admin, "u", &c_addr)["breaker"] == "open"
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    // Connect failures are retried on another target: at most the four requests in flight at
    // the kill can have failed.
    let failed = failed.load(Ordering::Relaxed);
    assert!(failed <= 4, "{failed} client-visible errors");
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(metric(admin, "pylon_upstream_ejections_total{upstream=\"u\"}") >= 1.0);
    assert_eq!(
        metric(
            admin,
            &format!("pylon_circuit_breaker_state{{target=\"{c_addr}\",upstream=\"u\"}}")
        ),
        2.0
    );
    // Open: no traffic reaches its address.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/")).status, 200);
    }

    // Back on the same address: a probe after `open_for` closes the breaker, and the target
    // ramps up over `slow_start`, visible in its weight and in its share of requests.
    c = echo_on(&c_addr, "c", &[]);
    wait_until(Duration::from_secs(5), "breaker closes", || {
        get(&gw.url("/"));
        target_state(admin, "u", &c_addr)["breaker"] == "closed"
    });
    let state = target_state(admin, "u", &c_addr);
    assert!(state["weight"].as_f64().unwrap() < 0.6, "{state}");
    let early = spread(&gw.url("/"), 150);
    wait_until(Duration::from_secs(5), "ramped up", || {
        target_state(admin, "u", &c_addr)["weight"] == 1.0
    });
    let late = spread(&gw.url("/"), 150);
    let (early_c, late_c) = (early.get("c").copied().unwrap_or(0), late["c"]);
    assert!(early_c * 3 < late_c * 2, "early {early:?} late {late:?}");
    assert!((40..=60).contains(&late_c), "{late:?}");
    drop(c);
}

#[test]
fn every_target_down_serves_the_fallback_at_once() {
    let (dead1, dead2) = (free_port(), free_port());
    let gw = gateway(&format!(
        "[upstreams.dead]\ntargets = [\"127.0.0.1:{dead1}\", \"127.0.0.1:{dead2}\"]\n\
         health_check = {{ kind = \"tcp\", interval = \"200ms\", unhealthy = 1 }}\n\
         [upstreams.refusing]\ntargets = [\"127.0.0.1:{dead1}\"]\nretries = 0\n\
         [policies.sec]\nkind = \"security_headers\"\ncontent_type_options = true\n\
         [[routes]]\nname = \"with\"\npaths = [\"/with\"]\nupstream = \"dead\"\npolicies = [\"sec\"]\n\
         fallback = {{ status = 200, body = '{{\"orders\":[]}}', content_type = \"application/json\", headers = {{ \"x-fallback\" = \"1\" }} }}\n\
         [[routes]]\nname = \"without\"\npaths = [\"/without\"]\nupstream = \"dead\"\n\
         [[routes]]\nname = \"connect\"\npaths = [\"/connect\"]\nupstream = \"refusing\"\n\
         fallback = {{ status = 503, body = \"later\" }}\n"
    ));
    wait_until(Duration::from_secs(5), "targets marked down", || {
        get(&gw.url("/without")).status == 503
    });
    let started = Instant::now();
    let r = get(&gw.url("/with"));
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"orders\":[]}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-fallback"), Some("1"));
    // Through the one writer: the request id and the route's response filters.
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_error(&get(&gw.url("/without")), 503, "upstream_unavailable");
    // No health checks: the failed connect ends in the fallback too.
    let r = get(&gw.url("/connect"));
    assert_eq!((r.status, r.body.as_str()), (503, "later"));
}

#[test]
fn a_pool_answering_500_everywhere_keeps_half_its_targets() {
    let echos: Vec<Echo> = (0..4)
        .map(|i| echo(&format!("e{i}"), &["--status", "500"]))
        .collect();
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n{}\nretries = 0\n\
         circuit_breaker = {{ failures = 2, open_for = \"30s\", max_ejection_percent = 50 }}\n\
         [[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        targets(&echos.iter().collect::<Vec<_>>())
    ));
    wait_for_port(admin);
    for _ in 0..40 {
        // The upstream's own 500s pass through; the pool never runs dry.
        assert_eq!(get(&gw.url("/")).status, 500);
    }
    let all = get(&format!("http://127.0.0.1:{admin}/upstreams")).json();
    let open = all["u"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["breaker"] == "open")
        .count();
    assert_eq!(open, 2, "{all}");
    assert_eq!(
        metric(admin, "pylon_upstream_ejections_total{upstream=\"u\"}"),
        2.0
    );
}

#[test]
fn a_failing_target_is_probed_no_faster_than_open_for() {
    let file = status_file("status");
    std::fs::write(&file, "500").unwrap();
    let bad = echo("bad", &["--status-file", file.to_str().unwrap()]);
    let good = echo("good", &[]);
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n{}\nretries = 0\n\
         circuit_breaker = {{ failures = 1, open_for = \"500ms\", max_open_for = \"10s\", max_ejection_percent = 50 }}\n\
         [[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        targets(&[&bad, &good])
    ));
    wait_for_port(admin);
    // 3.2 s of steady traffic. Opened at once; probes at 0.5 s, then 1 s later, then 2 s
    // later: a breaker that reopened for `open_for` each time would probe six times.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3200) {
        get(&gw.url("/"));
        std::thread::sleep(Duration::from_millis(5));
    }
    let probed = hits(&bad);
    assert!(
        (2..=4).contains(&probed),
        "{probed} requests reached the failing target"
    );
    // It heals by itself: once it answers well, the next probe closes the breaker.
    std::fs::write(&file, "200").unwrap();
    wait_until(Duration::from_secs(10), "breaker closes", || {
        get(&gw.url("/"));
        target_state(admin, "u", &bad.addr)["breaker"] == "closed"
    });
    let spread = spread(&gw.url("/"), 20);
    assert_eq!(spread.get("bad"), Some(&10), "{spread:?}");
}

#[test]
fn a_post_is_never_sent_twice() {
    let (a, b) = (
        echo("a", &["--status", "502"]),
        echo("b", &["--status", "502"]),
    );
    let slow = echo("slow", &["--delay", "2s"]);
    let gw = gateway(&format!(
        "[upstreams.u]\n{}\nretries = 1\n\
         [upstreams.slow]\ntargets = [\"{}\", \"{}\"]\nretries = 1\nread_timeout = \"300ms\"\n\
         [[routes]]\nname = \"r\"\npaths = [\"/r\"]\nupstream = \"u\"\n\
         [[routes]]\nname = \"s\"\npaths = [\"/s\"]\nupstream = \"slow\"\n",
        targets(&[&a, &b]),
        slow.addr,
        slow.addr
    ));
    let total = || hits(&a) + hits(&b);
    assert_eq!(request("POST", &gw.url("/r"), &[], Some("x")).status, 502);
    assert_eq!(total(), 1, "the POST reached one target once");
    // An idempotent request is retried on the other target.
    assert_eq!(get(&gw.url("/r")).status, 502);
    assert_eq!(total(), 3);
    // A POST that timed out after it was sent is not sent again.
    assert_eq!(request("POST", &gw.url("/s"), &[], Some("x")).status, 504);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hits(&slow), 1);
}

#[test]
fn the_retry_budget_caps_the_extra_load() {
    let (a, b) = (
        echo("a", &["--status", "503"]),
        echo("b", &["--status", "503"]),
    );
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n{}\nretries = 1\n\
         retry_budget = {{ percent = 20, min_per_second = 1 }}\n\
         retry_backoff = {{ base = \"1ms\", max = \"5ms\" }}\n\
         [[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        targets(&[&a, &b])
    ));
    wait_for_port(admin);
    for _ in 0..100 {
        assert_eq!(get(&gw.url("/")).status, 503);
    }
    // Without a budget: 200 upstream requests. With it: 100 plus at most 20% (the floor of
    // 1 per second over 10 s is lower).
    let upstream_hits = hits(&a) + hits(&b);
    assert!((100..=121).contains(&upstream_hits), "{upstream_hits}");
    let retried = metric(
        admin,
        "pylon_upstream_retries_total{reason=\"status_503\",upstream=\"u\"}",
    );
    assert_eq!(retried as u64, upstream_hits - 100);
    assert!(metric(admin, "pylon_retry_budget_exhausted_total{upstream=\"u\"}") >= 70.0);
}

#[test]
fn max_inflight_refuses_beyond_the_cap() {
    let slow = echo("slow", &["--delay", "1s"]);
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\ntargets = [\"{}\"]\nmax_inflight = 2\n\
         [[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        slow.addr
    ));
    wait_for_port(admin);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let first: Vec<_> = (0..2)
            .map(|_| s.spawn(|| get(&gw.url("/")).status))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let refused: Vec<u16> = (0..3)
            .map(|_| {
                let r = get(&gw.url("/"));
                assert_error(&r, 503, "upstream_unavailable");
                r.status
            })
            .collect();
        first
            .into_iter()
            .map(|h| h.join().unwrap())
            .chain(refused)
            .collect()
    });
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    assert_eq!(
        metric(
            admin,
            "pylon_upstream_unavailable_total{reason=\"max_inflight\",upstream=\"u\"}"
        ),
        3.0
    );
    // The slots are given back.
    assert_eq!(get(&gw.url("/")).status, 200);
}

#[test]
fn a_drain_lets_requests_in_flight_finish() {
    let slow = echo("slow", &["--delay", "800ms"]);
    let other = echo("other", &[]);
    let (admin, admin_toml) = admin_section();
    let gw = gateway_with_server(
        "",
        &format!(
            "{admin_toml}token = \"resilience-admin-token\"\n[upstreams.u]\n{}\nbalancer = \"round_robin\"\n\
             [[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
            targets(&[&slow, &other])
        ),
    );
    wait_for_port(admin);
    std::thread::scope(|s| {
        // Two requests: one lands on each target.
        let inflight: Vec<_> = (0..2).map(|_| s.spawn(|| get(&gw.url("/")))).collect();
        std::thread::sleep(Duration::from_millis(200));
        let drain = request(
            "POST",
            &format!(
                "http://127.0.0.1:{admin}/upstreams/u/targets/{}/drain",
                slow.addr
            ),
            &[("authorization", "Bearer resilience-admin-token")],
            None,
        );
        assert_eq!(drain.status, 200, "{}", drain.body);
        for r in inflight {
            assert_eq!(r.join().unwrap().status, 200);
        }
    });
    let spread = spread(&gw.url("/"), 10);
    assert_eq!(spread.get("other"), Some(&10), "{spread:?}");
}
