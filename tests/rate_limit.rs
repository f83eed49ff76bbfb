//! Rate and concurrency limits through the real gateway, locally and shared through a real
//! Redis.

mod common;
use common::*;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sleep until `offset` into the next window of `window` (windows are aligned to the epoch).
fn align(window: Duration, offset: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let w = window.as_millis() as u64;
    std::thread::sleep(Duration::from_millis(w - now % w) + offset);
}

/// Statuses of `n` GETs sent from `threads` threads at once.
fn burst(url: &str, n: usize, threads: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (url, headers) = (url.to_string(), headers.clone());
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (0..n / threads + usize::from(t < n % threads))
                    .map(|_| get_with(&url, &h).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn ok(statuses: &[u16]) -> usize {
    statuses.iter().filter(|&&s| s == 200).count()
}

fn upstream(e: &Echo) -> String {
    format!("[upstreams.echo]\ntargets = [\"{}\"]\n", e.addr)
}

fn route(name: &str, policies: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nupstream = \"echo\"\npolicies = [{policies}]\n"
    )
}

#[test]
fn exactly_the_limit_under_concurrency() {
    let e = echo("e", &[]);
    let gw = gateway(&format!(
        "{}[policies.hundred]\nkind = \"rate_limit\"\nlimit = 100\nwindow = \"5s\"\nkey = [\"header:x-user\"]\n{}",
        upstream(&e),
        route("r", "\"hundred\"")
    ));
    align(Duration::from_secs(5), Duration::from_millis(20));
    let started = Instant::now();
    let statuses = burst(&gw.url("/r"), 500, 50, &[("x-user", "a")]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the burst was too slow to judge"
    );
    let admitted = ok(&statuses);
    assert!((98..=102).contains(&admitted), "{admitted} of 500 admitted");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        500 - admitted
    );
    let r = get_with(&gw.url("/r"), &[("x-user", "a")]);
    assert_error(&r, 429, "rate_limited");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Another key has its own allowance.
    assert_eq!(get_with(&gw.url("/r"), &[("x-user", "b")]).status, 200);
}

#[test]
fn no_double_burst_across_a_window_boundary() {
    let e = echo("e", &[]);
    let gw = gateway(&format!(
        "{}[policies.ten]\nkind = \"rate_limit\"\nlimit = 10\nwindow = \"2s\"\n{}",
        upstream(&e),
        route("r", "\"ten\"")
    ));
    align(Duration::from_secs(2), Duration::from_millis(1500));
    let late = ok(&burst(&gw.url("/r"), 10, 5, &[]));
    align(Duration::from_secs(2), Duration::from_millis(100));
    let early = ok(&burst(&gw.url("/r"), 10, 5, &[]));
    assert_eq!(late, 10);
    // A fixed window would admit 10 more here; the sliding window admits about one.
    assert!(early <= 2, "{early} admitted just after the boundary");
}

#[test]
fn headers_report_the_tightest_limit() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway(&format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"
{}
[policies.per-user]
kind = "rate_limit"
limit = 3
window = "4s"
key = ["header:x-user"]

[policies.per-route]
kind = "rate_limit"
limit = 5
window = "4s"
key = ["route"]
{}"#,
        upstream(&e),
        route("r", "\"per-user\", \"per-route\"")
    ));
    wait_for_port(admin);
    align(Duration::from_secs(4), Duration::from_millis(20));
    let a = [("x-user", "a")];
    let r = get_with(&gw.url("/r"), &a);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-user\";q=3;w=4, \"per-route\";q=5;w=4")
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=4).contains(&reset), "{reset}");
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"per-user\";r=2;t={reset}").as_str())
    );
    get_with(&gw.url("/r"), &a);
    get_with(&gw.url("/r"), &a);
    let r = get_with(&gw.url("/r"), &a);
    assert_error(&r, 429, "rate_limited");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.header("retry-after").is_some());
    // User b has a fresh per-user allowance, but the route's is down to one after b's first.
    let b = [("x-user", "b")];
    let r = get_with(&gw.url("/r"), &b);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get_with(&gw.url("/r"), &b).status, 200);
    let r = get_with(&gw.url("/r"), &b);
    assert_error(&r, 429, "rate_limited");
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"per-route\";r=0;t={reset}").as_str())
    );

    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    assert!(
        metrics.contains("pylon_rate_limited_total{policy=\"per-user\",route=\"r\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pylon_rate_limited_total{policy=\"per-route\",route=\"r\"} 1"));
}

#[test]
fn throttle_delays_then_admits() {
    let e = echo("e", &[]);
    let gw = gateway(&format!(
        "{}[policies.smooth]\nkind = \"rate_limit\"\nlimit = 2\nwindow = \"1s\"\nthrottle = {{ max_delay = \"2s\" }}\n[policies.strict]\nkind = \"rate_limit\"\nlimit = 2\nwindow = \"1s\"\nthrottle = {{ max_delay = \"100ms\" }}\n{}{}",
        upstream(&e),
        route("smooth", "\"smooth\""),
        route("strict", "\"strict\"")
    ));
    align(Duration::from_secs(1), Duration::from_millis(20));
    for path in ["/smooth", "/smooth", "/strict", "/strict"] {
        assert_eq!(get(&gw.url(path)).status, 200);
    }
    // Over the limit, and the wait is longer than max_delay: refused at once.
    let started = Instant::now();
    assert_error(&get(&gw.url("/strict")), 429, "rate_limited");
    assert!(started.elapsed() < Duration::from_millis(500));
    // Over the limit early in the window: admitted once a request's worth has slid out,
    // after the window ends and half the next one.
    let started = Instant::now();
    assert_eq!(get(&gw.url("/smooth")).status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
}

#[test]
fn concurrency_cap_holds_under_a_slow_upstream() {
    let e = echo("slow", &["--delay", "600ms"]);
    let gw = gateway(&format!(
        "{}[policies.three]\nkind = \"concurrency_limit\"\nmax = 3\nkey = [\"route\"]\nstatus = 503\n{}",
        upstream(&e),
        route("r", "\"three\"")
    ));
    let statuses = burst(&gw.url("/r"), 10, 10, &[]);
    assert_eq!(ok(&statuses), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 7);
    assert_error(
        &{
            let url = gw.url("/r");
            let hold: Vec<_> = (0..3)
                .map(|_| {
                    let url = url.clone();
                    std::thread::spawn(move || get(&url).status)
                })
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            let r = get(&url);
            for h in hold {
                assert_eq!(h.join().unwrap(), 200);
            }
            r
        },
        503,
        "upstream_unavailable",
    );
    // Every slot was given back.
    assert_eq!(ok(&burst(&gw.url("/r"), 3, 3, &[])), 3);
}

fn cluster_policy(name: &str, redis: &str, limit: u64, on_error: &str) -> String {
    format!(
        "[policies.{name}]\nkind = \"rate_limit\"\nlimit = {limit}\nwindow = \"5s\"\nkey = [\"header:x-user\"]\nscope = \"cluster\"\nredis_url = \"{redis}\"\nstore_timeout = \"50ms\"\non_store_error = \"{on_error}\"\n"
    )
}

#[test]
fn gateways_share_one_limit_through_redis() {
    let e = echo("e", &[]);
    let redis = Redis::start();
    let config = format!(
        "{}{}{}",
        upstream(&e),
        cluster_policy("shared", &redis.url(), 20, "deny"),
        route("r", "\"shared\"")
    );
    let one = gateway(&config);
    let two = gateway(&config);
    align(Duration::from_secs(5), Duration::from_millis(20));
    let u = [("x-user", "a")];
    let admitted = (0..40)
        .filter(|i| {
            let gw = if i % 2 == 0 { &one } else { &two };
            get_with(&gw.url("/r"), &u).status == 200
        })
        .count();
    assert_eq!(admitted, 20);
    // Concurrent too: a fresh key, both gateways at once.
    let u = [("x-user", "b")];
    let (s1, s2) = std::thread::scope(|s| {
        let a = s.spawn(|| burst(&one.url("/r"), 30, 10, &u));
        let b = s.spawn(|| burst(&two.url("/r"), 30, 10, &u));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(ok(&s1) + ok(&s2), 20, "{s1:?} {s2:?}");
}

#[test]
fn redis_outage_fails_open_or_closed_and_recovers() {
    let e = echo("e", &[]);
    let redis = Redis::start();
    let (port, url) = (redis.port, redis.url());
    let admin = free_port();
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}{}{}{}{}",
        upstream(&e),
        cluster_policy("open", &url, 3, "allow"),
        cluster_policy("closed", &url, 3, "deny"),
        route("open", "\"open\""),
        route("closed", "\"closed\"")
    ));
    wait_for_port(admin);
    let u = [("x-user", "a")];
    assert_eq!(get_with(&gw.url("/open"), &u).status, 200);
    assert_eq!(get_with(&gw.url("/closed"), &u).status, 200);

    drop(redis);
    // Fail open: well past the limit, every request passes; fail closed: none does.
    for _ in 0..6 {
        let r = get_with(&gw.url("/open"), &u);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = get_with(&gw.url("/closed"), &u);
    assert_error(&r, 429, "rate_limited");
    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    assert!(
        metrics.contains("pylon_rate_limit_store_errors_total{policy=\"open\"}"),
        "{metrics}"
    );

    // Redis comes back (empty): limits apply again without a restart or reload.
    let _redis = Redis::on(port);
    wait_until(Duration::from_secs(10), "recovery", || {
        get_with(&gw.url("/closed"), &u).status == 200
    });
    align(Duration::from_secs(5), Duration::from_millis(20));
    let statuses: Vec<u16> = (0..6)
        .map(|_| get_with(&gw.url("/open"), &[("x-user", "fresh")]).status)
        .collect();
    assert_eq!(ok(&statuses), 3, "{statuses:?}");
}

#[test]
fn fixed_responses_are_limited_too() {
    let gw = gateway(
        "[policies.one]\nkind = \"rate_limit\"\nlimit = 1\nwindow = \"1h\"\n[[routes]]\nname = \"r\"\nrespond = { status = 200, body = \"ok\" }\npolicies = [\"one\"]\n",
    );
    let r = get(&gw.url("/"));
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"one\";q=1;w=3600"));
    let r = get(&gw.url("/"));
    assert_error(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 60 && retry <= 7200, "{retry}");
}

#[test]
fn counts_survive_a_reload_that_keeps_the_policy() {
    let e = echo("e", &[]);
    let config = |extra: &str| {
        format!(
            "{}[policies.three]\nkind = \"rate_limit\"\nlimit = 3\nwindow = \"1h\"\n{}{extra}",
            upstream(&e),
            route("r", "\"three\"")
        )
    };
    let gw = gateway(&config(""));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/r")).status, 200);
    }
    gw.rewrite(&config(&route("other", "")));
    gw.signal("HUP");
    wait_until(Duration::from_secs(10), "reload", || {
        get(&gw.url("/other")).status == 200
    });
    assert_error(&get(&gw.url("/r")), 429, "rate_limited");
}

#[test]
fn anonymous_clients_are_counted_by_address() {
    let e = echo("e", &[]);
    let gw = gateway_with_server(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "{}[consumers.guest]\n[consumers.alice]\napi_keys = [\"alice-key\"]\n[policies.keys]\nkind = \"api_key\"\nanonymous = \"guest\"\n[policies.two]\nkind = \"rate_limit\"\nlimit = 2\nwindow = \"1h\"\nkey = [\"consumer\"]\n{}",
            upstream(&e),
            // Listed before the auth policy: it still runs after it.
            route("r", "\"two\", \"keys\"")
        ),
    );
    let from = |ip: &'static str| get_with(&gw.url("/r"), &[("x-forwarded-for", ip)]);
    assert_eq!(from("192.0.2.1").json()["headers"]["x-consumer"], "guest");
    assert_eq!(from("192.0.2.1").status, 200);
    assert_error(&from("192.0.2.1"), 429, "rate_limited");
    // Another anonymous client has its own count; a known consumer counts by name.
    assert_eq!(from("192.0.2.2").status, 200);
    let alice = |ip: &str| {
        get_with(
            &gw.url("/r"),
            &[("x-forwarded-for", ip), ("x-api-key", "alice-key")],
        )
        .status
    };
    assert_eq!(alice("192.0.2.1"), 200);
    assert_eq!(alice("192.0.2.9"), 200);
    assert_eq!(alice("192.0.2.7"), 429);
}

#[test]
fn cluster_limits_are_exact_on_a_redis_cluster_and_survive_a_dead_node() {
    let e = echo("e", &[]);
    let mut cluster = RedisCluster::start();
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let policy = format!(
        "[policies.rc]\nkind = \"rate_limit\"\nlimit = 3\nwindow = \"10s\"\nkey = [\"header:x-user\"]\n\
         scope = \"cluster\"\nredis_cluster = [{}]\nstore_timeout = \"200ms\"\non_store_error = \"deny\"\n",
        seeds.join(", ")
    );
    let config = format!("{}{policy}{}", upstream(&e), route("r", "\"rc\""));
    let (one, two) = (gateway(&config), gateway(&config));
    align(Duration::from_secs(10), Duration::from_millis(20));
    // Thirty keys spread over the three nodes' slots; two gateways share each count.
    for user in 0..30 {
        let u = [("x-user", format!("user-{user}"))];
        let u = [(u[0].0, u[0].1.as_str())];
        let admitted = (0..5)
            .filter(|i| {
                let gw = if i % 2 == 0 { &one } else { &two };
                get_with(&gw.url("/r"), &u).status == 200
            })
            .count();
        assert_eq!(admitted, 3, "user-{user}");
    }

    // One node dies: its keys fail closed (`on_store_error = "deny"`), the others stay exact.
    let dead = cluster.ports[1];
    cluster.kill(dead);
    std::thread::sleep(Duration::from_secs(3));
    align(Duration::from_secs(10), Duration::from_millis(20));
    let (mut exact, mut refused) = (0, 0);
    for user in 0..30 {
        let name = format!("fresh-{user}");
        let u = [("x-user", name.as_str())];
        let statuses: Vec<u16> = (0..5)
            .map(|_| get_with(&one.url("/r"), &u).status)
            .collect();
        match ok(&statuses) {
            3 => exact += 1,
            0 => refused += 1,
            n => panic!("{name}: {n} admitted: {statuses:?}"),
        }
    }
    assert!(
        exact >= 10 && refused >= 3,
        "exact {exact}, refused {refused}"
    );
}

#[test]
fn a_redis_cluster_down_at_first_use_is_used_once_it_is_up() {
    let e = echo("e", &[]);
    let ports = RedisCluster::free_ports();
    let seeds: Vec<String> = RedisCluster::urls_of(&ports)
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let gw = gateway(&format!(
        "{}[policies.rc]\nkind = \"rate_limit\"\nlimit = 3\nwindow = \"10s\"\nkey = [\"header:x-user\"]\n\
         scope = \"cluster\"\nredis_cluster = [{}]\nstore_timeout = \"200ms\"\non_store_error = \"deny\"\n{}",
        upstream(&e),
        seeds.join(", "),
        route("r", "\"rc\"")
    ));
    // No cluster yet: the store fails, and the policy fails closed.
    assert_error(
        &get_with(&gw.url("/r"), &[("x-user", "early")]),
        429,
        "rate_limited",
    );
    let _cluster = RedisCluster::start_on(ports);
    wait_until(Duration::from_secs(20), "the cluster in use", || {
        get_with(&gw.url("/r"), &[("x-user", "probe")]).status == 200
    });
    align(Duration::from_secs(10), Duration::from_millis(20));
    let u = [("x-user", "late")];
    let statuses: Vec<u16> = (0..5).map(|_| get_with(&gw.url("/r"), &u).status).collect();
    assert_eq!(ok(&statuses), 3, "{statuses:?}");
}
