//! Service discovery against a real DNS server (dnsmasq on a loopback port) and watched files.

mod common;
use common::*;
use std::time::Duration;

fn admin_section() -> (u16, String) {
    let admin = free_port();
    (admin, format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"))
}

fn route() -> &'static str {
    "[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n"
}

/// Which echo servers answer, over `n` requests.
fn servers(gw: &Gateway, n: usize) -> Vec<String> {
    let mut names: Vec<String> = spread(&gw.url("/"), n).into_keys().collect();
    names.sort();
    names
}

#[test]
fn dns_discovery_follows_the_records_and_keeps_them_when_the_server_fails() {
    // Two targets on one port, on two loopback addresses: what A records can tell apart.
    let port = free_port();
    let a = echo_on(&format!("127.0.0.2:{port}"), "a", &[]);
    let b = echo_on(&format!("127.0.0.3:{port}"), "b", &[]);
    let mut dns = Dns::start("127.0.0.2 svc.test\n", &[]);
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n\
         discovery = {{ kind = \"dns\", name = \"svc.test\", port = {port}, interval = \"500ms\", min_ttl = \"100ms\", resolver = \"{}\" }}\n{}",
        dns.addr(),
        route()
    ));
    wait_until(Duration::from_secs(10), "ready", || {
        get(&format!("http://127.0.0.1:{admin}/readyz")).status == 200
    });
    assert_eq!(servers(&gw, 6), ["a"]);
    let state = target_state(admin, "u", &a.addr);
    assert_eq!(state["source"], "dns", "{state}");

    // A record added mid-test, then the first one removed.
    dns.set_hosts("127.0.0.2 svc.test\n127.0.0.3 svc.test\n");
    dns.reload();
    wait_until(Duration::from_secs(5), "both targets", || {
        servers(&gw, 6).len() == 2
    });
    dns.set_hosts("127.0.0.3 svc.test\n");
    dns.reload();
    wait_until(Duration::from_secs(5), "only b", || {
        servers(&gw, 6) == ["b"]
    });

    // The DNS server goes away: errors are logged and counted, the last targets stay.
    dns.stop();
    wait_until(Duration::from_secs(15), "a discovery error", || {
        metric(admin, "pylon_discovery_errors_total{upstream=\"u\"}") >= 1.0
    });
    assert_eq!(servers(&gw, 6), ["b"]);
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    assert!(
        log.contains("discovery failed, keeping the last targets"),
        "{log}"
    );
    drop(b);
}

#[test]
fn srv_records_give_ports_and_weights() {
    let heavy = echo("heavy", &[]);
    let light = echo("light", &[]);
    let port_of = |e: &Echo| e.addr.rsplit_once(':').unwrap().1.to_string();
    let dns = Dns::start(
        "127.0.0.1 heavy.svc.test\n127.0.0.1 light.svc.test\n",
        &[
            &format!("_http._tcp.svc.test,heavy.svc.test,{},0,3", port_of(&heavy)),
            &format!("_http._tcp.svc.test,light.svc.test,{},0,1", port_of(&light)),
            // A worse priority: only used when the better ones are gone.
            &format!("_http._tcp.svc.test,light.svc.test,{},1,1", free_port()),
        ],
    );
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n\
         discovery = {{ kind = \"srv\", name = \"_http._tcp.svc.test\", interval = \"1s\", resolver = \"{}\" }}\n{}",
        dns.addr(),
        route()
    ));
    wait_until(Duration::from_secs(10), "ready", || {
        get(&format!("http://127.0.0.1:{admin}/readyz")).status == 200
    });
    let counts = spread(&gw.url("/"), 400);
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts["heavy"], 300, "{counts:?}");
    let state = target_state(admin, "u", &heavy.addr);
    assert_eq!(
        (
            state["source"].as_str(),
            state["configured_weight"].as_u64()
        ),
        (Some("srv"), Some(3))
    );
    // The upstream Host is the name the record gave.
    let r = get(&gw.url("/"));
    let host = r.json()["headers"]["host"].as_str().unwrap().to_string();
    let expected = [
        format!("heavy.svc.test:{}", port_of(&heavy)),
        format!("light.svc.test:{}", port_of(&light)),
    ];
    assert!(expected.contains(&host), "{host}");
}

#[test]
fn file_discovery_picks_up_edits_and_keeps_the_last_good_list() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let dir = scratch();
    let file = dir.join("targets.toml");
    std::fs::write(&file, format!("targets = [\"{}\"]\n", a.addr)).unwrap();
    let (admin, admin_toml) = admin_section();
    let gw = gateway(&format!(
        "{admin_toml}[upstreams.u]\n\
         discovery = {{ kind = \"file\", path = \"{}\", interval = \"300ms\" }}\n{}",
        file.display(),
        route()
    ));
    wait_until(Duration::from_secs(10), "ready", || {
        get(&format!("http://127.0.0.1:{admin}/readyz")).status == 200
    });
    assert_eq!(servers(&gw, 4), ["a"]);
    std::fs::write(
        &file,
        format!("targets = [{{ addr = \"{}\", weight = 2 }}]\n", b.addr),
    )
    .unwrap();
    // Within about one interval.
    wait_until(Duration::from_millis(1500), "the edit", || {
        servers(&gw, 4) == ["b"]
    });
    std::fs::write(&file, "targets = [\"not a target\"").unwrap();
    wait_until(Duration::from_secs(5), "a discovery error", || {
        metric(admin, "pylon_discovery_errors_total{upstream=\"u\"}") >= 1.0
    });
    assert_eq!(servers(&gw, 4), ["b"]);

    // JSON, with a static target beside the discovered ones.
    let json = dir.join("targets.json");
    std::fs::write(&json, format!("{{\"targets\": [\"{}\"]}}", b.addr)).unwrap();
    let gw2 = gateway(&format!(
        "{admin_toml2}[upstreams.u]\ntargets = [\"{}\"]\n\
         discovery = {{ kind = \"file\", path = \"{}\", interval = \"300ms\" }}\n{}",
        a.addr,
        json.display(),
        route(),
        admin_toml2 = ""
    ));
    wait_until(Duration::from_secs(5), "both", || {
        servers(&gw2, 6) == ["a", "b"]
    });
}

#[test]
fn discovered_targets_wait_for_their_check_keep_state_and_drain() {
    let (a, b) = (echo("a", &[]), echo("b", &[]));
    let file = scratch().join("targets.toml");
    std::fs::write(&file, format!("targets = [\"{}\"]\n", a.addr)).unwrap();
    let admin = free_port();
    let token = "discovery-admin-token";
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{token}\"\n[upstreams.u]\n\
         discovery = {{ kind = \"file\", path = \"{}\", interval = \"200ms\" }}\n\
         health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"2s\" }}\n{}",
        file.display(),
        route()
    ));
    wait_until(Duration::from_secs(10), "ready", || {
        get(&format!("http://127.0.0.1:{admin}/readyz")).status == 200
    });
    assert_eq!(servers(&gw, 4), ["a"]);
    // Drain a discovered target; a new one joins, checked before it gets traffic.
    let drain = request(
        "POST",
        &format!(
            "http://127.0.0.1:{admin}/upstreams/u/targets/{}/drain",
            a.addr
        ),
        &[("authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(drain.status, 200, "{}", drain.body);
    std::fs::write(
        &file,
        format!("targets = [\"{}\", \"{}\"]\n", a.addr, b.addr),
    )
    .unwrap();
    wait_until(Duration::from_secs(3), "b listed", || {
        !target_state(admin, "u", &b.addr).is_null()
    });
    wait_until(Duration::from_secs(3), "b checked", || {
        target_state(admin, "u", &b.addr)["healthy"] == true
    });
    // `a` stayed in the list: its drain held across the lookup.
    assert_eq!(target_state(admin, "u", &a.addr)["drained"], true);
    assert_eq!(servers(&gw, 6), ["b"]);
}
