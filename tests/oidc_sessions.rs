//! `oidc` sessions over time, against a real OpenID provider (npm's oidc-provider, tests/js)
//! that rotates refresh tokens and takes a reused one as theft: a due access token refreshed
//! once however many requests find it due, on one gateway or a fleet sharing Redis or a Redis
//! Cluster; the
//! session's end; an upstream 401 refreshing the token and the request sent again; a refresh
//! that fails ending the session; bearer tokens on the same route (`bearer = true`).

mod common;
use common::idp::{send, Answer, Browser, Idp};
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// An `oidc` route `app` in front of `target`, with `extra` settings and sections.
fn config(target: &str, issuer: &str, extra: &str) -> String {
    format!(
        "[upstreams.e]\ntargets = [\"{target}\"]\n\n[policies.login]\nkind = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"pylon-web\"\nclient_secret = \"pylon-web-secret\"\ncookie_secret = \"{SECRET}\"\nforward_access_token = true\n{extra}\n[[routes]]\nname = \"app\"\nupstream = \"e\"\npolicies = [\"login\"]\n"
    )
}

/// The bearer token the upstream (echo) saw.
fn token_of(answer: &Answer) -> String {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let auth = seen["headers"]["authorization"]
        .as_str()
        .unwrap_or_default();
    auth.strip_prefix("Bearer ").unwrap_or(auth).to_string()
}

/// `n` API calls at once to each of `urls` with one cookie.
fn at_once(urls: &[String], cookie: &str, n: usize) -> Vec<Answer> {
    std::thread::scope(|s| {
        let calls: Vec<_> = urls
            .iter()
            .flat_map(|url| std::iter::repeat_n(url, n))
            .map(|url| s.spawn(move || send("GET", url, cookie, None, "application/json")))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

/// The `Max-Age` of the session cookie among `cookies`.
fn max_age(cookies: &[String]) -> u64 {
    let session = cookies
        .iter()
        .find(|c| c.starts_with("pylon_session="))
        .expect("a session cookie");
    let at = session.find("Max-Age=").expect("a Max-Age") + 8;
    session[at..].split(';').next().unwrap().parse().unwrap()
}

#[test]
fn a_due_access_token_is_refreshed_once_however_many_requests_find_it_due() {
    let e = echo("e", &[]);
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let gw = gateway(&config(&e.addr, &issuer, "session_ttl = \"12s\"\n"));
    // Access tokens last 4 s: refreshed after 3 s.
    let idp = Idp::start(idp_port, None, Some(&gw.url("/oauth/callback")), 4);
    let mut browser = Browser::default();
    let page = gw.url("/app/page");
    let began = Instant::now();
    let first = token_of(&browser.login(&page, &issuer, "bob"));
    assert_eq!(idp.refreshes(), 0);

    // Due: 20 requests at once with the same cookie, one refresh (a second use of the rotated
    // refresh token would have ended the session), one new token for all.
    std::thread::sleep(Duration::from_millis(3500));
    let old = browser.cookie(&page);
    let answers = at_once(&[gw.url("/app/data")], &old, 20);
    let second = token_of(&answers[0]);
    assert_ne!(second, first);
    for answer in &answers {
        assert_eq!(token_of(answer), second);
        let age = max_age(&answer.cookies);
        assert!(
            (1..=12).contains(&age),
            "the cookie lives as the session: {age}"
        );
    }
    assert_eq!(idp.refreshes(), 1);
    browser.take(&page, &answers[0].cookies);

    // The new cookie needs no refresh; the old one, still sent by a late request, gets the
    // refresh's answer again rather than a second refresh.
    assert_eq!(token_of(&browser.api(&gw.url("/app/data"))), second);
    let late = send("GET", &gw.url("/app/data"), &old, None, "application/json");
    assert_eq!(token_of(&late), second);
    assert_eq!(idp.refreshes(), 1);

    // Past `session_ttl`, the cookie is no session: 401 for an API call, a page logs in again.
    std::thread::sleep(
        Duration::from_secs(12).saturating_sub(began.elapsed()) + Duration::from_millis(500),
    );
    assert_eq!(browser.api(&gw.url("/app/data")).status, 401);
    let again = browser.get(&page);
    assert_eq!(again.status, 302);
    assert!(again
        .location
        .unwrap()
        .starts_with(&format!("{issuer}/auth?")));
}

#[test]
fn an_upstream_401_refreshes_the_token_once_and_the_request_goes_again() {
    let e = echo("e", &[]);
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    // The upstream: a gateway that checks the token at the provider on every request.
    let api = gateway(&format!(
        "[upstreams.e]\ntargets = [\"{}\"]\n\n[policies.check]\nkind = \"oauth2_introspection\"\nendpoint = \"{issuer}/token/introspection\"\nclient_id = \"pylon\"\nclient_secret = \"pylon-secret\"\ncache_ttl = \"1ms\"\nnegative_cache_ttl = \"1ms\"\nforward_credentials = true\n\n[[routes]]\nname = \"api\"\nupstream = \"e\"\npolicies = [\"check\"]\n",
        e.addr
    ));
    let admin = free_port();
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n{}",
        config(&format!("127.0.0.1:{}", api.port), &issuer, "")
    ));
    wait_for_port(admin);
    let idp = Idp::start(idp_port, None, Some(&gw.url("/oauth/callback")), 300);
    let mut browser = Browser::default();
    let page = gw.url("/app/page");
    let first = token_of(&browser.login(&page, &issuer, "carol"));

    // The provider ends the access token early: the upstream says 401, the gateway refreshes
    // and sends the request again; the client sees only the answer and a new cookie.
    idp.forget(&first);
    let answer = browser.api(&gw.url("/app/data"));
    let second = token_of(&answer);
    assert_ne!(second, first);
    assert!(!answer.cookies.is_empty());
    assert_eq!(idp.refreshes(), 1);
    let retries = "pylon_upstream_retries_total{reason=\"filter\",upstream=\"e\"}";
    assert_eq!(metric(admin, retries), 1.0);

    // A request with a body goes again whole.
    idp.forget(&second);
    let posted = browser.send(
        "POST",
        &gw.url("/app/form"),
        Some("a=1&b=2"),
        "application/json",
    );
    let third = token_of(&posted);
    assert_ne!(third, second);
    let seen: serde_json::Value = serde_json::from_str(&posted.body).unwrap();
    assert_eq!(seen["body"], "a=1&b=2");
    assert_eq!(idp.refreshes(), 2);

    // Revoked at the provider (the whole grant): the refresh fails, the session ends.
    idp.revoke(&third, "pylon-web", "pylon-web-secret");
    let refused = browser.api(&gw.url("/app/data"));
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused
        .cookies
        .iter()
        .any(|c| c.starts_with("pylon_session=;") && c.contains("Max-Age=0")));
    assert!(!browser.jar.keys().any(|(_, name)| name == "pylon_session"));
    assert_eq!(metric(admin, retries), 3.0);
}

fn redis_keys(redis: &Redis) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "pylon:oidc:*",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn redis_get(redis: &Redis, key: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "GET", key])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_fleet_shares_sessions_in_redis_and_refreshes_each_once() {
    let e = echo("e", &[]);
    let redis = Redis::start();
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let extra = format!("session_redis = \"{}\"\n", redis.url());
    let a = gateway(&config(&e.addr, &issuer, &extra));
    let b = gateway(&config(&e.addr, &issuer, &extra));
    let idp = Idp::start(idp_port, None, Some(&a.url("/oauth/callback")), 4);
    let mut browser = Browser::default();
    let page = a.url("/app/page");
    let first = token_of(&browser.login(&page, &issuer, "dave"));

    // One session in Redis, sealed there (no token readable), named by the cookie.
    let keys = redis_keys(&redis);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!redis_get(&redis, &keys[0]).contains(&first));
    let cookie = browser.cookie(&page);
    assert!(cookie.len() < 200, "the cookie names the session: {cookie}");
    let on_b = send("GET", &b.url("/app/x"), &cookie, None, "application/json");
    assert_eq!(token_of(&on_b), first);

    // Due on both gateways at once: one refresh for the fleet, one new token for all.
    std::thread::sleep(Duration::from_millis(3500));
    let answers = at_once(&[a.url("/app/data"), b.url("/app/data")], &cookie, 10);
    let second = token_of(&answers[0]);
    assert_ne!(second, first);
    let tokens: Vec<_> = answers.iter().map(token_of).collect();
    assert!(tokens.iter().all(|t| *t == second), "{tokens:?}");
    assert_eq!(idp.refreshes(), 1);

    // Logout on one gateway ends the session on the other.
    let out = send("GET", &b.url("/logout"), &cookie, None, "text/html");
    assert_eq!(out.status, 302);
    // The session is gone (the claim on its spent refresh token lapses by itself).
    assert!(!redis_keys(&redis).contains(&keys[0]));
    let gone = send(
        "GET",
        &a.url("/app/data"),
        &cookie,
        None,
        "application/json",
    );
    assert_eq!(gone.status, 401);

    // The store down: 503, not a login loop.
    drop(redis);
    let down = send("GET", &a.url("/app/data"), &cookie, None, "text/html");
    assert_eq!(down.status, 503, "{}", down.body);
}

#[test]
fn on_a_redis_cluster_a_session_is_the_fleets_until_a_logout_anywhere() {
    let e = echo("e", &[]);
    let cluster = RedisCluster::start();
    let nodes: Vec<String> = RedisCluster::urls_of(&cluster.ports)
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let extra = format!("session_redis = [{}]\n", nodes.join(", "));
    let a = gateway(&config(&e.addr, &issuer, &extra));
    let b = gateway(&config(&e.addr, &issuer, &extra));
    let idp = Idp::start(idp_port, None, Some(&a.url("/oauth/callback")), 4);
    let mut browser = Browser::default();
    let page = a.url("/app/page");
    let first = token_of(&browser.login(&page, &issuer, "frank"));
    let cookie = browser.cookie(&page);
    let on_b = send("GET", &b.url("/app/x"), &cookie, None, "application/json");
    assert_eq!(token_of(&on_b), first);

    std::thread::sleep(Duration::from_millis(3500));
    let answers = at_once(&[a.url("/app/data"), b.url("/app/data")], &cookie, 5);
    let second = token_of(&answers[0]);
    assert_ne!(second, first);
    let tokens: Vec<_> = answers.iter().map(token_of).collect();
    assert!(tokens.iter().all(|t| *t == second), "{tokens:?}");
    assert_eq!(idp.refreshes(), 1);

    assert_eq!(
        send("GET", &a.url("/logout"), &cookie, None, "text/html").status,
        302
    );
    let gone = send(
        "GET",
        &b.url("/app/data"),
        &cookie,
        None,
        "application/json",
    );
    assert_eq!(gone.status, 401);
}

#[test]
fn with_bearer_an_api_client_may_bring_an_access_token_instead_of_a_session() {
    let e = echo("e", &[]);
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let extra = "bearer = true\nbearer_audience = [\"urn:jwt\", \"urn:orders\"]\nconsumer_claim = \"client_id\"\n";
    let gw = gateway(&config(&e.addr, &issuer, extra));
    let idp = Idp::start(idp_port, None, Some(&gw.url("/oauth/callback")), 300);
    let call = |token: &str| {
        get_with(
            &gw.url("/app/data"),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("accept", "application/json"),
            ],
        )
    };

    // A JWT access token, checked against the provider's keys: no call to the provider.
    let jwt = idp.token("urn:jwt", "orders:read");
    assert_eq!(jwt.split('.').count(), 3);
    let ok = call(&jwt);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["headers"]["x-consumer"], "svc");
    assert_eq!(
        ok.json()["headers"]["authorization"],
        format!("Bearer {jwt}")
    );
    assert_eq!(idp.introspections(), 0);

    // Another audience, or changed: refused.
    let other = idp.token("urn:jwt2", "orders:read");
    assert_eq!(call(&other).status, 401);
    let mut changed = jwt.clone().into_bytes();
    let i = changed.len() - 5;
    changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(call(&String::from_utf8(changed).unwrap()).status, 401);

    // An opaque token: introspected at the provider, the answer remembered.
    let opaque = idp.token("urn:orders", "orders:read");
    assert_eq!(opaque.split('.').count(), 1);
    for _ in 0..3 {
        let ok = call(&opaque);
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.json()["headers"]["x-consumer"], "svc");
    }
    assert_eq!(idp.introspections(), 1);
    assert_eq!(call("not-a-token").status, 401);
    let elsewhere = idp.token("urn:short", "orders:read");
    assert_eq!(
        call(&elsewhere).status,
        401,
        "an opaque token for another audience"
    );

    // No token and no session: 401 for an API call, as without `bearer`.
    assert_eq!(
        get_with(&gw.url("/app/data"), &[("accept", "application/json")]).status,
        401
    );
}
