//! The `cache` policy against the demo echo: what is stored and served, `Cache-Status` and
//! `Age`, one upstream fetch for many concurrent misses, variants by `Accept-Encoding`, and
//! authentication on hits.

mod common;
use common::*;
use std::sync::{Arc, Barrier};

/// A gateway with route `e` to `echo` through a `cache` policy with `settings`, and `more`
/// (other policies, listed before the cache on the route) on it.
fn cached(echo: &Echo, settings: &str, more: &[&str], extra: &str) -> Gateway {
    let policies: Vec<String> = more
        .iter()
        .chain(["cached"].iter())
        .map(|p| format!("\"{p}\""))
        .collect();
    gateway_with_server(
        "max_connections_per_ip = 5000\n",
        &format!(
            "[upstreams.e]\ntargets = [\"{}\"]\n\n[policies.cached]\nkind = \"cache\"\n{settings}\n{extra}\n[[routes]]\nname = \"e\"\nupstream = \"e\"\npolicies = [{}]\n",
            echo.addr,
            policies.join(", ")
        ),
    )
}

/// `/_reply` answering `body` with `headers` (as `name:value`).
fn reply(gw: &Gateway, body: &str, headers: &[&str]) -> String {
    let mut path = format!("/_reply?body={body}");
    for h in headers {
        path.push_str(&format!("&header={h}"));
    }
    gw.url(&path)
}

fn status(resp: &Resp) -> &str {
    resp.header("cache-status").unwrap_or("")
}

#[test]
fn a_fresh_answer_is_stored_and_served_with_age_and_cache_status() {
    let e = echo("e", &[]);
    let gw = cached(&e, "", &[], "");
    let url = reply(&gw, "hello", &["cache-control:max-age=60"]);
    let first = get(&url);
    assert_eq!(first.body, "hello");
    assert_eq!(status(&first), "pylon; fwd=miss; stored");
    assert_eq!(first.header("age"), None);
    let second = get(&url);
    assert_eq!(second.body, "hello");
    assert!(
        status(&second).starts_with("pylon; hit; ttl=5"),
        "{}",
        status(&second)
    );
    assert!(second.header("age").is_some());
    // HEAD and a range come from the stored GET.
    let head = request("HEAD", &url, &[], None);
    assert!(status(&head).contains("hit"));
    let part = get_with(&url, &[("range", "bytes=1-3")]);
    assert_eq!((part.status, part.body.as_str()), (206, "ell"));
    // A different query is another entry.
    assert!(status(&get(&format!("{url}&x=1"))).contains("fwd=miss"));
    assert_eq!(hits(&e), 2);
}

#[test]
fn answers_that_may_not_be_stored_are_not() {
    let e = echo("e", &[]);
    let gw = cached(&e, "", &[], "");
    for (name, headers) in [
        ("no-store", vec!["cache-control:no-store"]),
        ("private", vec!["cache-control:private,max-age=60"]),
        ("cookie", vec!["cache-control:max-age=60", "set-cookie:a=b"]),
        // No freshness information, and no default_ttl: no heuristic freshness.
        ("bare", vec![]),
        // A Vary on a header outside `vary_headers`.
        ("vary", vec!["cache-control:max-age=60", "vary:x-mood"]),
    ] {
        let url = reply(&gw, name, &headers);
        for _ in 0..2 {
            let resp = get(&url);
            assert_eq!(resp.body, name);
            assert_eq!(status(&resp), "pylon; fwd=miss", "{name}");
        }
    }
    // Methods the cache does not answer pass by it.
    let post = request(
        "POST",
        &reply(&gw, "p", &["cache-control:max-age=60"]),
        &[],
        Some(""),
    );
    assert_eq!(status(&post), "pylon; fwd=bypass");
    // A request that says no-store is neither answered from the cache nor stored.
    let url = reply(&gw, "r", &["cache-control:max-age=60"]);
    get(&url);
    let fresh = get_with(&url, &[("cache-control", "no-store")]);
    assert_eq!(status(&fresh), "pylon; fwd=request");
    assert_eq!(hits(&e), 13);
}

#[test]
fn default_ttl_stores_answers_without_freshness_and_max_ttl_caps_it() {
    let e = echo("e", &[]);
    let gw = cached(&e, "default_ttl = \"5s\"\nmax_ttl = \"10s\"", &[], "");
    let ttl = |url: &str| {
        get(url);
        let status = get(url).header("cache-status").unwrap_or("").to_string();
        status
            .strip_prefix("pylon; hit; ttl=")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{status}"))
    };
    // No freshness of its own: default_ttl.
    assert!((3..=5).contains(&ttl(&reply(&gw, "bare", &[]))));
    // An hour asked for: max_ttl.
    assert!((8..=10).contains(&ttl(&reply(&gw, "long", &["cache-control:max-age=3600"]))));
    // no-store still wins over default_ttl.
    let url = reply(&gw, "never", &["cache-control:no-store"]);
    get(&url);
    assert_eq!(status(&get(&url)), "pylon; fwd=miss");
}

#[test]
fn a_thousand_concurrent_misses_reach_the_upstream_once() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = cached(
        &e,
        "lock_timeout = \"10s\"",
        &[],
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    wait_for_port(admin);
    // The upstream takes a second: the others arrive while it is fetched.
    let url = reply(&gw, "cold", &["cache-control:max-age=60"]) + "&delay_ms=1000";
    let n = 1000;
    let start = Arc::new(Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (url, start) = (url.clone(), Arc::clone(&start));
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    start.wait();
                    get(&url).body
                })
                .unwrap()
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), "cold");
    }
    assert_eq!(hits(&e), 1);
    // Those that came while it was being fetched waited on the cache lock (the rest were
    // hits), and the histogram counts them.
    let waited = metric(admin, "pylon_cache_lock_wait_seconds_count");
    assert!(waited >= 1.0, "{waited} waits counted");
}

#[test]
fn a_gzip_entry_is_never_served_to_a_client_that_did_not_ask_for_it() {
    let e = echo("e", &[]);
    let gw = cached(&e, "", &[], "");
    let url = format!(
        "{}&gzip=1",
        reply(
            &gw,
            "zipped",
            &["cache-control:max-age=60", "vary:accept-encoding"]
        )
    );
    let gzip = [("accept-encoding", "gzip, deflate")];
    assert!(status(&get_with(&url, &gzip)).contains("fwd=miss"));
    // The same codings in another order share the variant.
    let same = get_with(&url, &[("accept-encoding", "deflate,gzip")]);
    assert!(status(&same).contains("hit"), "{}", status(&same));
    assert_eq!(same.body, "zipped");
    // Without gzip: not the stored variant.
    let plain = get_with(&url, &[("accept-encoding", "identity")]);
    assert!(status(&plain).contains("fwd=miss"), "{}", status(&plain));
    let refused = get_with(&url, &[("accept-encoding", "gzip;q=0, br")]);
    assert!(
        status(&refused).contains("fwd=miss"),
        "{}",
        status(&refused)
    );
}

#[test]
fn a_hit_still_needs_credentials() {
    let e = echo("e", &[]);
    let gw = cached(
        &e,
        "",
        &["keys"],
        "[policies.keys]\nkind = \"api_key\"\nheader = \"x-api-key\"\n\n[consumers.app]\napi_keys = [\"k1\"]\n",
    );
    let url = reply(&gw, "secret", &["cache-control:public,max-age=60"]);
    assert_eq!(get_with(&url, &[("x-api-key", "k1")]).body, "secret");
    let hit = get_with(&url, &[("x-api-key", "k1")]);
    assert!(status(&hit).contains("hit"));
    assert_error(&get(&url), 401, "unauthorized");
    assert_eq!(hits(&e), 1);
}

#[test]
fn a_hit_still_counts_against_a_rate_limit() {
    let e = echo("e", &[]);
    let gw = cached(
        &e,
        "",
        &["limit"],
        "[policies.limit]\nkind = \"rate_limit\"\nlimit = 3\nwindow = \"1m\"\n",
    );
    let url = reply(&gw, "popular", &["cache-control:max-age=60"]);
    let statuses: Vec<u16> = (0..5).map(|_| get(&url).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(hits(&e), 1);
}

#[test]
fn an_unsafe_method_invalidates_and_an_arriving_age_counts() {
    let e = echo("e", &[]);
    let gw = cached(&e, "", &[], "");
    let url = reply(&gw, "v1", &["cache-control:max-age=60"]);
    get(&url);
    assert!(status(&get(&url)).contains("hit"));
    // A successful POST to the URI removes what is stored for it (RFC 9111 §4.4).
    let post = request("POST", &url, &[], Some("x"));
    assert_eq!(post.status, 200);
    assert!(status(&get(&url)).contains("fwd=miss"));
    // An answer 50 s old on arrival has 10 s of its 60 left, and says it is 50 s old.
    let aged = reply(&gw, "aged", &["cache-control:max-age=60", "age:50"]);
    get(&aged);
    let hit = get(&aged);
    let ttl: i64 = status(&hit)
        .strip_prefix("pylon; hit; ttl=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{}", status(&hit)));
    assert!((8..=10).contains(&ttl), "{ttl}");
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((50..=52).contains(&age), "{age}");
}

#[test]
fn a_stale_entry_is_served_while_it_refreshes_and_when_no_target_can_answer() {
    // While a slow upstream refreshes it: the stale entry at once.
    let slow = echo("slow", &[]);
    let gw = cached(&slow, "", &[], "");
    let url = reply(
        &gw,
        "swr",
        &["cache-control:max-age=1,stale-while-revalidate=30"],
    ) + "&delay_ms=2000";
    get(&url);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let stale = get(&url);
    // Not waiting for the upstream's 2 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(stale.body, "swr");
    assert!(
        status(&stale).starts_with("pylon; hit; ttl=-"),
        "{}",
        status(&stale)
    );
    wait_until(
        std::time::Duration::from_secs(8),
        "the entry refreshed",
        || status(&get(&url)).starts_with("pylon; hit; ttl=0"),
    );
    // No target to try (the only one failed its health check): the stale entry, not a 503.
    let mut e = echo("e", &[]);
    let gw = gateway(&format!(
        "[upstreams.e]\ntargets = [\"{}\"]\nretries = 0\nhealth_check = {{ kind = \"tcp\", interval = \"300ms\", unhealthy = 1 }}\n\n[policies.cached]\nkind = \"cache\"\nstale_if_error = \"60s\"\n\n[[routes]]\nname = \"e\"\nupstream = \"e\"\npolicies = [\"cached\"]\n",
        e.addr
    ));
    let url = reply(&gw, "kept", &["cache-control:max-age=1"]);
    assert_eq!(get(&url).body, "kept");
    e.proc.0.kill().unwrap();
    let other = gw.url("/other");
    wait_until(
        std::time::Duration::from_secs(5),
        "the target out of rotation",
        || get(&other).status == 503,
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let served = get(&url);
    assert_eq!((served.status, served.body.as_str()), (200, "kept"));
    assert!(
        status(&served).starts_with("pylon; hit; ttl=-"),
        "{}",
        status(&served)
    );
}

#[test]
fn purges_by_key_prefix_and_tag_hard_and_soft() {
    let e = echo("e", &[]);
    let admin = free_port();
    // The echo's own answers (any path) are stored by default_ttl; `/_reply` gives tags.
    let gw = cached(
        &e,
        "default_ttl = \"60s\"",
        &[],
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"t0k3n\"\n"),
    );
    wait_for_port(admin);
    let purge = |body: &str| {
        let resp = request(
            "POST",
            &format!("http://127.0.0.1:{admin}/cache/purge"),
            &[("authorization", "Bearer t0k3n")],
            Some(body),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.json()["purged"].as_u64().unwrap()
    };
    let stored = |path: &str| {
        let url = gw.url(path);
        get(&url);
        assert!(status(&get(&url)).contains("hit"), "{path}");
        url
    };
    let a = stored("/a/1?b=2&a=1");
    let b = stored("/a/2");
    let red_blue = stored("/_reply?body=rb&header=surrogate-key:red%20blue");
    let blue_green = stored("/_reply?body=bg&header=cache-tag:blue,green");
    // By key: the route and the path with its query (in any order).
    assert_eq!(purge(r#"{"route": "e", "path": "/a/1?a=1&b=2"}"#), 1);
    assert!(status(&get(&a)).contains("fwd=miss"));
    assert!(status(&get(&b)).contains("hit"));
    // By tag, soft: marked stale, revalidated (here refetched) on the next request.
    assert_eq!(purge(r#"{"tag": "blue", "soft": true}"#), 2);
    assert!(status(&get(&red_blue)).contains("fwd=stale"));
    assert!(status(&get(&blue_green)).contains("fwd=stale"));
    assert_eq!(purge(r#"{"tag": "green"}"#), 1);
    assert!(status(&get(&blue_green)).contains("fwd=miss"));
    // By prefix: /a/1 (stored again above) and /a/2.
    assert_eq!(purge(r#"{"prefix": "/a/"}"#), 2);
    assert!(status(&get(&b)).contains("fwd=miss"));
    // A purge needs the token and a selector.
    let refused = request(
        "POST",
        &format!("http://127.0.0.1:{admin}/cache/purge"),
        &[],
        Some(r#"{"prefix": "/"}"#),
    );
    assert_eq!(refused.status, 401);
    let bad = request(
        "POST",
        &format!("http://127.0.0.1:{admin}/cache/purge"),
        &[("authorization", "Bearer t0k3n")],
        Some(r#"{"everything": true}"#),
    );
    assert_eq!(bad.status, 400);
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn eviction_keeps_the_memory_tier_within_its_budget() {
    let e = echo("e", &[]);
    let admin = free_port();
    let gw = gateway_with_server(
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[cache]\nmemory_size = \"2MiB\"\n\n[upstreams.e]\ntargets = [\"{}\"]\n\n[policies.cached]\nkind = \"cache\"\n\n[[routes]]\nname = \"e\"\nupstream = \"e\"\npolicies = [\"cached\"]\n",
            e.addr
        ),
    );
    wait_for_port(admin);
    let pid = gw.proc.0.id();
    // 2,000 distinct answers of 10 KiB: 20 MiB through a 2 MiB tier.
    let body = "x".repeat(1000);
    let mut rss_at_400 = 0;
    for i in 0..2000 {
        let url = gw.url(&format!(
            "/_reply?body={body}&repeat=10&n={i}&header=cache-control:max-age=600"
        ));
        assert_eq!(get(&url).body.len(), 10_000);
        if i == 400 {
            rss_at_400 = rss_kib(pid);
        }
    }
    let size = metric(admin, "pylon_cache_size_bytes{tier=\"memory\"}");
    let evicted = metric(admin, "pylon_cache_evictions_total{tier=\"memory\"}");
    let entries = metric(admin, "pylon_cache_entries{tier=\"memory\"}");
    assert!(size <= (2 << 20) as f64, "{size} bytes stored");
    assert!(evicted >= 1700.0, "{evicted} evicted");
    assert!((150.0..=215.0).contains(&entries), "{entries} entries");
    // Past the budget, memory stays put: 1,600 more answers (16 MiB) add little.
    let grown = rss_kib(pid).saturating_sub(rss_at_400);
    println!("memory tier: {size} bytes, {entries} entries, {evicted} evicted; RSS grew {grown} KiB after the first 400");
    assert!(grown < 8 << 10, "RSS grew {grown} KiB");
    // The most recent answers are still there.
    let last = gw.url(&format!(
        "/_reply?body={body}&repeat=10&n=1999&header=cache-control:max-age=600"
    ));
    assert!(status(&get(&last)).contains("hit"));
}

/// Gateways in front of `e` with `[cache] purge_redis = nodes[i]` (TOML values), and their
/// admin ports.
fn fleet(e: &Echo, nodes: &[String]) -> Vec<(Gateway, u16)> {
    nodes
        .iter()
        .map(|purge_redis| {
            let admin = free_port();
            let gw = gateway(&format!(
                "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"t0k3n\"\n\n[cache]\npurge_redis = {purge_redis}\n\n[upstreams.e]\ntargets = [\"{}\"]\n\n[policies.cached]\nkind = \"cache\"\n\n[[routes]]\nname = \"e\"\nupstream = \"e\"\npolicies = [\"cached\"]\n",
                e.addr
            ));
            wait_for_port(admin);
            (gw, admin)
        })
        .collect()
}

/// Whether `gw` has logged `line` at least `times` times.
fn logged(gw: &Gateway, line: &str, times: usize) -> bool {
    std::fs::read_to_string(gw.dir.join("pylon.log"))
        .is_ok_and(|l| l.matches(line).count() >= times)
}

const TAGGED: &str = "/_reply?body=shared&header=cache-control:max-age=600&header=cache-tag:news";

/// Store the tagged answer on every gateway, purge its tag through the first, and see it gone
/// from the others within `within`.
fn purge_reaches_the_fleet(gateways: &[(Gateway, u16)], within: std::time::Duration) {
    for (gw, _) in gateways {
        get(&gw.url(TAGGED));
        assert!(status(&get(&gw.url(TAGGED))).contains("hit"));
    }
    let (first, admin) = &gateways[0];
    let resp = request(
        "POST",
        &format!("http://127.0.0.1:{admin}/cache/purge"),
        &[("authorization", "Bearer t0k3n")],
        Some(r#"{"tag": "news"}"#),
    );
    assert_eq!(resp.json()["purged"], 1);
    assert_eq!(resp.json()["published"], true, "{}", resp.body);
    assert!(status(&get(&first.url(TAGGED))).contains("fwd=miss"));
    for (other, _) in &gateways[1..] {
        wait_until(within, "the purge on the other gateway", || {
            // A miss stores it again; the first request after the purge is the one that tells.
            status(&get(&other.url(TAGGED))).contains("fwd=miss")
        });
    }
}

#[test]
fn a_purge_sent_to_one_gateway_reaches_every_gateway_on_the_channel() {
    let redis = Redis::start();
    let e = echo("e", &[]);
    let url = format!("\"{}\"", redis.url());
    let gateways = fleet(&e, &[url.clone(), url]);
    // Both subscribed before the purge is published.
    for (gw, _) in &gateways {
        wait_until(std::time::Duration::from_secs(5), "subscribed", || {
            logged(gw, "subscribed to pylon:cache:purge", 1)
        });
    }
    purge_reaches_the_fleet(&gateways, std::time::Duration::from_secs(1));
}

#[test]
fn purges_cross_a_redis_cluster_and_outlive_the_node_a_gateway_was_on() {
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls();
    // Both list the third node first: each subscribes there, and publishes there.
    let seeds = format!("[\"{}\", \"{}\", \"{}\"]", urls[2], urls[0], urls[1]);
    let e = echo("e", &[]);
    let gateways = fleet(&e, &[seeds.clone(), seeds]);
    let on = |url: &str| format!("subscribed to pylon:cache:purge on {url}");
    for (gw, _) in &gateways {
        wait_until(std::time::Duration::from_secs(5), "subscribed", || {
            logged(gw, &on(&urls[2]), 1)
        });
    }
    purge_reaches_the_fleet(&gateways, std::time::Duration::from_secs(1));

    // The node goes: each gateway says so and follows the next; the next purge is published
    // through it and reaches the other gateway.
    cluster.kill(cluster.ports[2]);
    for (gw, _) in &gateways {
        wait_until(std::time::Duration::from_secs(5), "the move", || {
            logged(gw, &format!("lost {}", urls[2]), 1) && logged(gw, &on(&urls[0]), 1)
        });
    }
    purge_reaches_the_fleet(&gateways, std::time::Duration::from_secs(1));
}
