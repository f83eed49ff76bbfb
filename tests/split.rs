//! A route's `split` over real upstreams: exact proportions, match rules, sticky cookies, a dead
//! backend's share, a canary that ramps and rolls back, and the admin's weights across reloads.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "t0k3n";

/// Upstreams `a` and `b` (one echo each), the route `r` with `split` (a TOML array of
/// backends) and `more` route keys, and an admin listener; its port.
fn split_gateway(a: &Echo, b: &Echo, split: &str, more: &str, extra: &str) -> (Gateway, u16) {
    let admin = free_port();
    let gw = gateway_with_server(
        "max_connections_per_ip = 5000\n",
        &config(admin, a, b, split, more, extra),
    );
    wait_for_port(admin);
    (gw, admin)
}

fn config(admin: u16, a: &Echo, b: &Echo, split: &str, more: &str, extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\n[upstreams.a]\ntargets = [\"{}\"]\n\n[upstreams.b]\ntargets = [\"{}\"]\n{extra}\n[[routes]]\nname = \"r\"\nsplit = {split}\n{more}\n",
        a.addr, b.addr
    )
}

/// Which echo answered (its `--name`).
fn server(resp: &Resp) -> String {
    resp.json()["server"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn split_view(admin: u16) -> serde_json::Value {
    get(&format!("http://127.0.0.1:{admin}/routes/r/split")).json()
}

fn change_split(admin: u16, body: &str) -> Resp {
    request(
        "POST",
        &format!("http://127.0.0.1:{admin}/routes/r/split"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Some(body),
    )
}

#[test]
fn a_90_10_split_sends_exactly_900_and_100_of_1000_requests() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let split = r#"[{ upstream = "a", weight = 90 }, { upstream = "b", weight = 10 }]"#;
    let (gw, admin) = split_gateway(&a, &b, split, "", "");
    for _ in 0..1000 {
        assert_eq!(get(&gw.url("/x")).status, 200);
    }
    let (to_a, to_b) = (hits(&a), hits(&b));
    assert!(
        to_a.abs_diff(900) <= 1 && to_b.abs_diff(100) <= 1,
        "{to_a}/{to_b}"
    );
    wait_until(Duration::from_secs(2), "counted", || {
        metric(
            admin,
            "pylon_split_requests_total{backend=\"b\",route=\"r\"}",
        ) == to_b as f64
    });
    assert_eq!(
        metric(admin, "pylon_split_weight{backend=\"a\",route=\"r\"}"),
        90.0
    );
    let view = split_view(admin);
    assert_eq!(view["backends"][1]["requests"], to_b);
    assert_eq!(view["backends"][0]["weight"], 90);
}

#[test]
fn match_rules_send_testers_to_their_backend_whatever_the_weights() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let split = r#"[{ upstream = "a", weight = 1 }, { upstream = "b", weight = 0, match = { headers = { "x-canary" = "1" } } }]"#;
    let (gw, _admin) = split_gateway(&a, &b, split, "", "");
    for _ in 0..20 {
        assert_eq!(server(&get_with(&gw.url("/x"), &[("x-canary", "1")])), "b");
        assert_eq!(server(&get(&gw.url("/x"))), "a");
        assert_eq!(server(&get_with(&gw.url("/x"), &[("x-canary", "2")])), "a");
    }
    // Cookie and query rules, every part needed.
    let split = r#"[{ upstream = "a", weight = 1 }, { upstream = "b", weight = 0, match = { cookies = { "beta" = "yes" }, query = { "v" = "2" } } }]"#;
    let (gw, _admin) = split_gateway(&a, &b, split, "", "");
    let beta = [("cookie", "theme=dark; beta=yes")];
    assert_eq!(server(&get_with(&gw.url("/x?v=2"), &beta)), "b");
    assert_eq!(server(&get_with(&gw.url("/x?v=1"), &beta)), "a");
    assert_eq!(server(&get(&gw.url("/x?v=2"))), "a");
}

#[test]
fn a_sticky_cookie_keeps_each_of_100_users_on_their_side() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let split = r#"[{ upstream = "a", weight = 50 }, { upstream = "b", weight = 50 }]"#;
    let (gw, admin) = split_gateway(
        &a,
        &b,
        split,
        "sticky = \"cookie:pylon-split\"\nsticky_max_age = \"1h\"",
        "",
    );
    let mut sides = std::collections::HashMap::new();
    let mut cookies = Vec::new();
    for user in 0..100 {
        let first = get(&gw.url(&format!("/u/{user}")));
        let set = first
            .header("set-cookie")
            .expect("a cookie for a new user")
            .to_string();
        assert!(
            set.contains("Max-Age=3600") && set.contains("HttpOnly"),
            "{set}"
        );
        assert!(
            !set.contains("=a;") && !set.contains("=b;"),
            "the cookie names no upstream: {set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        let side = server(&first);
        for _ in 0..19 {
            let again = get_with(&gw.url(&format!("/u/{user}")), &[("cookie", &cookie)]);
            assert_eq!(server(&again), side, "user {user} moved");
            assert!(again.header("set-cookie").is_none());
        }
        *sides.entry(side.clone()).or_insert(0) += 1;
        cookies.push((cookie, side));
    }
    assert_eq!(sides.get("a"), Some(&50), "{sides:?}");
    let b_cookie = cookies
        .iter()
        .find(|(_, side)| side == "b")
        .unwrap()
        .0
        .clone();
    // At weight 0 a backend takes no new user, and (drain_sticky, the default) its sticky
    // users move at their next request, with a new cookie.
    assert_eq!(change_split(admin, r#"{"weights": {"b": 0}}"#).status, 200);
    let b_user = (0..100)
        .map(|u| get(&gw.url(&format!("/v/{u}"))))
        .find(|r| server(r) == "b");
    assert!(b_user.is_none(), "weight 0 took a new user");
    let moved = get_with(&gw.url("/u/0"), &[("cookie", &b_cookie)]);
    assert_eq!(server(&moved), "a");
    assert!(moved
        .header("set-cookie")
        .is_some_and(|c| !c.contains(&b_cookie)));

    // With drain_sticky = false they stay while it can take them; new users still do not come.
    let sticky = "sticky = \"cookie:pylon-split\"\ndrain_sticky = false";
    let (gw, admin) = split_gateway(&a, &b, split, sticky, "");
    let b_cookie = (0..10)
        .map(|u| get(&gw.url(&format!("/w/{u}"))))
        .find(|r| server(r) == "b")
        .and_then(|r| Some(r.header("set-cookie")?.split(';').next()?.to_string()))
        .unwrap();
    assert_eq!(change_split(admin, r#"{"weights": {"b": 0}}"#).status, 200);
    for _ in 0..10 {
        assert_eq!(
            server(&get_with(&gw.url("/w"), &[("cookie", &b_cookie)])),
            "b"
        );
        assert_eq!(server(&get(&gw.url("/w"))), "a");
    }
}

#[test]
fn a_header_keeps_its_clients_on_one_side_and_a_new_weight_moves_only_some() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let split = r#"[{ upstream = "a", weight = 50 }, { upstream = "b", weight = 50 }]"#;
    let (gw, admin) = split_gateway(&a, &b, split, "sticky = \"header:x-user\"", "");
    let side = |user: usize| {
        server(&get_with(
            &gw.url("/x"),
            &[("x-user", &format!("user-{user}"))],
        ))
    };
    let before: Vec<String> = (0..100).map(side).collect();
    for _ in 0..5 {
        assert_eq!((0..100).map(side).collect::<Vec<_>>(), before);
    }
    let on_b = before.iter().filter(|s| *s == "b").count();
    assert!((25..=75).contains(&on_b), "{on_b} of 100 on b");
    // 50/50 to 80/20: users only move from b to a.
    assert_eq!(
        change_split(admin, r#"{"weights": {"a": 80, "b": 20}}"#).status,
        200
    );
    let after: Vec<String> = (0..100).map(side).collect();
    assert!(before
        .iter()
        .zip(&after)
        .all(|(was, now)| was == now || (was == "b" && now == "a")));
    assert!(after.iter().filter(|s| *s == "b").count() < on_b);
}

#[test]
fn a_backend_whose_targets_are_all_down_gives_its_share_to_the_other() {
    let a = echo("a", &[]);
    let dead = free_port();
    let admin = free_port();
    let gw = gateway_with_server(
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[upstreams.a]\ntargets = [\"{}\"]\n\n[upstreams.b]\ntargets = [\"127.0.0.1:{dead}\"]\nhealth_check = {{ kind = \"tcp\", interval = \"300ms\", unhealthy = 1 }}\n\n[[routes]]\nname = \"r\"\nsplit = [{{ upstream = \"a\", weight = 10 }}, {{ upstream = \"b\", weight = 90 }}]\n",
            a.addr
        ),
    );
    wait_for_port(admin);
    wait_until(Duration::from_secs(5), "b's check", || {
        split_view(admin)["backends"][1]["available"] == false
    });
    for _ in 0..200 {
        let resp = get(&gw.url("/x"));
        assert_eq!((resp.status, server(&resp).as_str()), (200, "a"));
    }
    assert_eq!(hits(&a), 200);
}

#[test]
fn a_canary_ramps_in_steps_and_rolls_back_when_it_fails() {
    let status_file = scratch().join("status");
    std::fs::write(&status_file, "200").unwrap();
    let a = echo("a", &[]);
    let b = echo("b", &["--status-file", status_file.to_str().unwrap()]);
    let split = r#"[{ upstream = "a", weight = 90 }, { upstream = "b", weight = 10, canary = { step = 10, every = "1s", max_weight = 40, max_error_rate = 0.1, min_requests = 20, window = "2s" } }]"#;
    let (gw, admin) = split_gateway(&a, &b, split, "", "");
    // Steady load from four clients, counting what they see.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, failed, url) =
                (stop.clone(), sent.clone(), failed.clone(), gw.url("/x"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let status = get(&url).status;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let weight = |i: usize| {
        split_view(admin)["backends"][i]["weight"]
            .as_u64()
            .unwrap_or(0)
    };
    // The ramp: 10, 20, 30, 40, a step a second, the others giving way.
    let mut seen = vec![weight(1)];
    wait_until(Duration::from_secs(10), "the ramp to its maximum", || {
        let w = weight(1);
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        w == 40
    });
    assert_eq!(seen, [10, 20, 30, 40]);
    assert_eq!(weight(0), 60);
    assert_eq!(
        metric(admin, "pylon_canary_steps_total{backend=\"b\",route=\"r\"}"),
        3.0
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    // The canary starts failing: rolled back within its window (and a tick).
    let before = sent.load(Ordering::Relaxed);
    std::fs::write(&status_file, "500").unwrap();
    let broke = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "the rollback", || weight(1) == 0);
    let took = broke.elapsed();
    let errors = failed.load(Ordering::Relaxed);
    let during = sent.load(Ordering::Relaxed) - before;
    println!("rolled back {took:?} after the canary broke: {errors} of {during} requests failed meanwhile");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // At most its share (40%) of what was sent until the rollback.
    assert!(
        errors > 0 && errors * 10 <= during * 4 + 10,
        "{errors} of {during}"
    );
    let view = split_view(admin);
    assert_eq!(view["backends"][1]["canary"]["phase"], "rolled_back");
    assert_eq!(view["backends"][0]["weight"], 100);
    assert_eq!(
        metric(
            admin,
            "pylon_canary_rollbacks_total{backend=\"b\",route=\"r\"}"
        ),
        1.0
    );
    // Then nothing more fails, and it stays at 0 however long.
    std::thread::sleep(Duration::from_millis(200));
    let settled = failed.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(failed.load(Ordering::Relaxed), settled);
    assert_eq!(weight(1), 0);
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|t| t.join().unwrap());
    assert!(logged(&gw, "canary b rolled back to weight 0"));

    // An operator resumes it once fixed: it starts over from its configured weight.
    std::fs::write(&status_file, "200").unwrap();
    let resumed = change_split(admin, r#"{"action": "resume"}"#);
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.json()["backends"][1]["weight"], 10);
    assert_eq!(resumed.json()["backends"][1]["canary"]["phase"], "ramping");
}

fn logged(gw: &Gateway, line: &str) -> bool {
    std::fs::read_to_string(gw.dir.join("pylon.log")).is_ok_and(|l| l.contains(line))
}

#[test]
fn admin_weights_apply_at_once_survive_a_reload_that_keeps_the_split_and_go_with_one_that_edits_it()
{
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let split = r#"[{ upstream = "a", weight = 90 }, { upstream = "b", weight = 10 }]"#;
    let (gw, admin) = split_gateway(&a, &b, split, "", "");
    // Without the token: refused.
    let anonymous = request(
        "POST",
        &format!("http://127.0.0.1:{admin}/routes/r/split"),
        &[],
        Some(r#"{"weights": {"a": 0}}"#),
    );
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        change_split(admin, r#"{"weights": {"nope": 1}}"#).status,
        400
    );
    assert_eq!(
        change_split(admin, r#"{"action": "promote"}"#).status,
        400,
        "no canary"
    );
    let set = change_split(admin, r#"{"weights": {"a": 0, "b": 100}}"#);
    assert_eq!(set.status, 200, "{}", set.body);
    let all_b = || (0..20).all(|_| server(&get(&gw.url("/x"))) == "b");
    assert!(all_b());

    // A reload that leaves the split as it was keeps the operator's weights.
    let reloads = |admin| metric(admin, "pylon_config_reloads_total{result=\"success\"}");
    let reload = |text: String| {
        let before = reloads(admin);
        std::fs::write(gw.config_path(), text).unwrap();
        gw.signal("HUP");
        wait_until(Duration::from_secs(5), "the reload", || {
            reloads(admin) > before
        });
    };
    let head = std::fs::read_to_string(gw.config_path()).unwrap();
    reload(format!("{head}\n[[routes]]\nname = \"other\"\npaths = [\"=/other\"]\nrespond = {{ body = \"o\" }}\n"));
    assert_eq!(get(&gw.url("/other")).body, "o");
    assert!(all_b());
    // One that edits the split starts from the file again.
    reload(
        head.replace("weight = 90", "weight = 100")
            .replace("weight = 10 }", "weight = 0 }"),
    );
    assert!((0..20).all(|_| server(&get(&gw.url("/x"))) == "a"));
    assert_eq!(split_view(admin)["backends"][0]["weight"], 100);
}

#[test]
fn a_split_the_gateway_cannot_build_is_refused_with_its_place() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let dir = scratch();
    for (split, more, says) in [
        (
            r#"[{ upstream = "a" }, { upstream = "nope" }]"#,
            "",
            "splits to unknown upstream `nope`",
        ),
        (
            r#"[{ upstream = "a" }, { upstream = "a" }]"#,
            "",
            "names upstream `a` twice",
        ),
        (
            r#"[{ upstream = "a" }]"#,
            "sticky = \"cookies\"",
            "expected \"cookie:NAME\"",
        ),
        (
            r#"[{ upstream = "a", canary = { max_weight = 5 } }, { upstream = "b", canary = { max_weight = 5 } }]"#,
            "",
            "at most one canary",
        ),
        (
            r#"[{ upstream = "a", weight = 5, canary = { max_weight = 50 } }]"#,
            "",
            "max_weight",
        ),
    ] {
        let path = dir.join("pylon.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n{}",
            config(1, &a, &b, split, more, "")
        );
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(PYLON)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{split} was taken");
        assert!(err.contains(says), "{split}: {err}");
        assert!(err.contains("pylon.toml:"), "{err}");
    }
}

#[test]
fn a_backend_at_its_max_inflight_gives_its_turn_to_the_other() {
    let a = echo("a", &[]);
    let b = echo("b", &["--delay", "1s"]);
    let split = r#"[{ upstream = "a", weight = 50 }, { upstream = "b", weight = 50 }]"#;
    let admin = free_port();
    let gw = gateway_with_server(
        "max_connections_per_ip = 5000\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[upstreams.a]\ntargets = [\"{}\"]\n\n[upstreams.b]\ntargets = [\"{}\"]\nmax_inflight = 2\n\n[[routes]]\nname = \"r\"\nsplit = {split}\n",
            a.addr, b.addr
        ),
    );
    wait_for_port(admin);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), gw.url("/x"));
            std::thread::spawn(move || {
                barrier.wait();
                get(&url).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        hits(&b) <= 2 && hits(&a) >= 18,
        "a {} b {}",
        hits(&a),
        hits(&b)
    );
}
