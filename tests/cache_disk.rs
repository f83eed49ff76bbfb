//! The cache's entries outlive the process: kept in memory across a reload, and found on disk
//! (`[cache] path`) after a binary upgrade and a restart; the disk tier keeps within its budget.

mod common;
use common::daemon::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "t0k3n";

/// A daemon's config: route `e` to `upstream` through a `cache` policy, `[cache]` as given.
fn config(dir: &Path, port: u16, admin: u16, upstream: &str, cache: &str) -> String {
    format!(
        r#"{server}
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[cache]
path = "{dir}/cache"
{cache}

[upstreams.e]
targets = ["{upstream}"]

[policies.cached]
kind = "cache"

[[routes]]
name = "e"
upstream = "e"
policies = ["cached"]
"#,
        server = server_section(dir, port, "1s"),
        dir = dir.display()
    )
}

fn cache_status(resp: &Resp) -> &str {
    resp.header("cache-status").unwrap_or("")
}

/// Wait until the admin's `series` reaches `at_least`.
fn wait_metric(admin: u16, series: &str, at_least: f64) {
    wait_until(Duration::from_secs(10), series, || {
        metric(admin, series) >= at_least
    });
}

/// A daemon with `[cache]` as given, in front of `e`.
struct Cached {
    _daemon: Daemon,
    dir: PathBuf,
    port: u16,
    admin: u16,
    path: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    pid: i32,
}

fn cached(e: &Echo, cache: &str) -> Cached {
    let dir = scratch();
    let (port, admin) = (free_port(), free_port());
    let path = dir.join("pylon.toml");
    let pid_file = dir.join("pylon.pid");
    std::fs::write(&path, config(&dir, port, admin, &e.addr, cache)).unwrap();
    let log = dir.join("pylon.log");
    let daemon = Daemon(pid_file.clone());
    let pid = start_daemon(&path, &log, &pid_file, port, None);
    wait_for_port(admin);
    Cached {
        _daemon: daemon,
        dir,
        port,
        admin,
        path,
        pid_file,
        log,
        pid,
    }
}

fn disk_entries(admin: u16) -> f64 {
    metric(admin, "pylon_cache_entries{tier=\"disk\"}")
}

#[test]
fn entries_survive_a_reload_a_binary_upgrade_and_a_restart() {
    let e = echo("e", &[]);
    let gw = cached(&e, "");
    let (dir, port, admin, mut pid) = (&gw.dir, gw.port, gw.admin, gw.pid);
    let (path, pid_file, log) = (&gw.path, &gw.pid_file, &gw.log);

    let url =
        |q: &str| format!("http://127.0.0.1:{port}/_reply?header=cache-control:max-age=600&{q}");
    let plain = url("body=plain&header=surrogate-key:news");
    let varied = url("body=varied&header=vary:accept-encoding");
    let gzip = [("accept-encoding", "gzip")];
    let identity = [("accept-encoding", "identity")];
    assert_eq!(cache_status(&get(&plain)), "pylon; fwd=miss; stored");
    assert_eq!(
        cache_status(&get_with(&varied, &gzip)),
        "pylon; fwd=miss; stored"
    );
    assert_eq!(
        cache_status(&get_with(&varied, &identity)),
        "pylon; fwd=miss; stored"
    );
    assert_eq!(hits(&e), 3);
    wait_metric(admin, "pylon_cache_entries{tier=\"disk\"}", 3.0);
    // One file per entry, once the writer has reached them.
    wait_until(Duration::from_secs(10), "three files", || {
        walk(&dir.join("cache")) == 3
    });

    // Every entry is served from the cache after each step; the upstream sees no request.
    let served_from_cache = |step: &str| {
        for (url, headers, body) in [
            (&plain, &[][..], "plain"),
            (&varied, &gzip[..], "varied"),
            (&varied, &identity[..], "varied"),
        ] {
            let resp = get_with(url, headers);
            assert_eq!(resp.body, body, "{step}");
            assert!(
                cache_status(&resp).starts_with("pylon; hit"),
                "{step}: {url} {headers:?} {}",
                cache_status(&resp)
            );
            assert!(resp.header("age").is_some(), "{step}");
        }
        assert_eq!(hits(&e), 3, "{step}: the upstream was asked");
    };
    served_from_cache("before");

    // A reload (any change to the file) keeps the tiers: the memory tier answers.
    let reloads = metric(admin, "pylon_config_reloads_total{result=\"success\"}");
    std::fs::write(path, config(dir, port, admin, &e.addr, "\n")).unwrap();
    kill(pid, "HUP");
    wait_metric(
        admin,
        "pylon_config_reloads_total{result=\"success\"}",
        reloads + 1.0,
    );
    // The same memory tier, not a new one refilled from disk.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metric(admin, "pylon_cache_entries{tier=\"memory\"}"), 3.0);
    served_from_cache("after a reload");

    // A binary upgrade: a new process, an empty memory tier, the files found again.
    let old = pid;
    pid = upgrade(pid, pid_file);
    // Then no request can reach the old process's memory.
    wait_until(Duration::from_secs(20), "the old process to leave", || {
        !alive(old)
    });
    wait_until(Duration::from_secs(10), "the scan", || {
        disk_entries(admin) >= 3.0
    });
    served_from_cache("after an upgrade");

    // A restart: the process ends and another starts on the same folder.
    kill(pid, "TERM");
    wait_until(Duration::from_secs(10), "the daemon to stop", || {
        !alive(pid)
    });
    pid = start_daemon(path, log, pid_file, port, Some(pid));
    wait_for_port(admin);
    wait_until(Duration::from_secs(10), "the scan", || {
        disk_entries(admin) >= 3.0
    });
    served_from_cache("after a restart");

    // A purge by tag reaches an entry on disk, and its file.
    let purged = request(
        "POST",
        &format!("http://127.0.0.1:{admin}/cache/purge"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Some(r#"{"tag": "news"}"#),
    );
    assert_eq!(purged.json()["purged"], 1, "{}", purged.body);
    assert_eq!(cache_status(&get(&plain)), "pylon; fwd=miss; stored");
    assert_eq!(hits(&e), 4);
    assert!(alive(pid));
}

/// Files under `dir`, outside its `tmp/`.
fn walk(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != "tmp")
        .map(|e| match e.file_type().is_ok_and(|t| t.is_dir()) {
            true => walk(&e.path()),
            false => 1,
        })
        .sum()
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type().is_ok_and(|t| t.is_dir()) {
            true => du(&e.path()),
            false => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[test]
fn the_disk_tier_keeps_within_its_budget_and_answers_what_memory_let_go() {
    let e = echo("e", &[]);
    let gw = cached(&e, "memory_size = \"256KiB\"\ndisk_size = \"2MiB\"");
    let (dir, port, admin) = (&gw.dir, gw.port, gw.admin);

    // 600 distinct answers of 10 KiB: 6 MiB through 256 KiB of memory and 2 MiB of disk.
    let body = "x".repeat(1000);
    let url = |i: usize| {
        format!("http://127.0.0.1:{port}/_reply?body={body}&repeat=10&n={i}&header=cache-control:max-age=600")
    };
    for i in 0..600 {
        assert_eq!(get(&url(i)).body.len(), 10_000);
    }
    wait_until(Duration::from_secs(10), "the writes", || {
        metric(admin, "pylon_cache_evictions_total{tier=\"disk\"}") >= 390.0
    });
    let entries = disk_entries(admin);
    let size = metric(admin, "pylon_cache_size_bytes{tier=\"disk\"}");
    let evicted = metric(admin, "pylon_cache_evictions_total{tier=\"disk\"}");
    // Removals are the writer's: let it reach the last.
    std::thread::sleep(Duration::from_millis(500));
    let files = walk(&dir.join("cache"));
    let bytes = du(&dir.join("cache"));
    println!("disk tier: {entries} entries, {size} bytes, {evicted} evicted; {files} files of {bytes} bytes");
    assert!(size <= (2 << 20) as f64, "{size} bytes stored");
    assert!(bytes <= 2 << 20, "{bytes} bytes on disk");
    assert!((150.0..=205.0).contains(&entries), "{entries} entries");
    assert_eq!(files as f64, entries, "a file per entry, no more");

    // The memory tier holds about 25 of them: older ones still on disk are hits.
    let before = hits(&e);
    let mut from_disk = 0;
    for i in (500..600).rev() {
        if cache_status(&get(&url(i))).starts_with("pylon; hit") {
            from_disk += 1;
        }
    }
    assert!(from_disk >= 90, "{from_disk} of the last 100 were hits");
    assert_eq!(hits(&e) - before, 100 - from_disk);
}
