//! The JSON access log: one valid line per request, and reopening for logrotate.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn lines(path: &std::path::Path, at_least: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only whole lines: the writer may be in the middle of one.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        let lines: Vec<_> = complete.lines().map(String::from).collect();
        if lines.len() >= at_least || Instant::now() > deadline {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}")))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_json_line_per_request_and_reopen_on_usr1() {
    let e = echo("e", &[]);
    let dir = scratch();
    let log = dir.join("access.log");
    let gw = gateway(&format!(
        "[log]\naccess_log = \"{}\"\n\n[upstreams.pool]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npaths = [\"/api\"]\nupstream = \"pool\"\n",
        log.display(),
        e.addr
    ));
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = get(&gw.url(&format!("/api/items/{i}?api_key=secret-{i}")));
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").unwrap().to_string());
    }
    let r = request(
        "POST",
        &gw.url("/nowhere"),
        &[("x-request-id", "miss-1")],
        Some("abc"),
    );
    assert_eq!(r.status, 404);

    let entries = lines(&log, 21);
    assert_eq!(entries.len(), 21, "one line per request");
    for (entry, id) in entries.iter().zip(&ids) {
        assert_eq!(entry["request_id"], id.as_str());
        assert_eq!(entry["status"], 200);
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["route"], "api");
        assert_eq!(entry["upstream"], "pool");
        assert_eq!(entry["target"], e.addr.as_str());
        assert_eq!(entry["client"], "127.0.0.1");
        assert_eq!(entry["trace_id"].as_str().unwrap().len(), 32);
        assert!(entry["path"].as_str().unwrap().starts_with("/api/items/"));
        assert!(entry["duration_ms"].as_f64().unwrap() >= entry["upstream_ms"].as_f64().unwrap());
        assert!(entry["bytes_out"].as_u64().unwrap() > 0);
        assert!(entry["time"].as_str().unwrap().ends_with('Z'));
    }
    let miss = &entries[20];
    assert_eq!(miss["request_id"], "miss-1");
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["route"], serde_json::Value::Null);
    // Query strings (which can carry credentials) stay out of the log.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("secret-"), "query string logged");

    // logrotate: move the file away, signal, and new lines go to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    let r = get(&gw.url("/api/after-rotation"));
    assert_eq!(r.status, 200);
    let fresh = lines(&log, 1);
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["path"], "/api/after-rotation");
    assert_eq!(lines(&rotated, 21).len(), 21);
}

#[test]
fn sigusr1_without_an_access_log_is_harmless() {
    let mut gw = gateway("[[routes]]\nname = \"r\"\nrespond = { body = \"ok\" }\n");
    gw.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.alive(), "SIGUSR1 ended the process");
    assert_eq!(get(&gw.url("/")).body, "ok");
}

#[test]
fn sigusr1_right_after_start_is_harmless() {
    // logrotate may signal a process that is still starting, before the service that catches
    // SIGUSR1 runs.
    let dir = scratch();
    let port = free_port();
    let path = dir.join("pylon.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\npid_file = \"{d}/p.pid\"\nupgrade_sock = \"{d}/u.sock\"\n[log]\naccess_log = \"{d}/access.log\"\n[[routes]]\nname = \"r\"\nrespond = {{ body = \"ok\" }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut child = Proc(
        std::process::Command::new(PYLON)
            .arg("-c")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Once the first line of `main` has run (SIGUSR1 shows as ignored in the process's status;
    // before that, no program can do anything about a signal), signal repeatedly through
    // start-up until the listener answers.
    let status = format!("/proc/{pid}/status");
    let usr1_ignored = || {
        std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| {
                let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .is_some_and(|mask| mask & (1 << (libc::SIGUSR1 - 1)) != 0)
    };
    while !usr1_ignored() {
        assert!(std::time::Instant::now() < deadline, "pylon never started");
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut sent = 0;
    while !listening(port) {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "SIGUSR1 during start-up ended the process"
        );
        assert!(std::time::Instant::now() < deadline, "pylon never listened");
        let _ = std::process::Command::new("kill")
            .args(["-USR1", &pid])
            .status();
        sent += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(sent > 0, "pylon listened before any signal was sent");
    assert!(child.0.try_wait().unwrap().is_none());
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).body, "ok");
}
