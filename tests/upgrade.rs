//! Under constant load: 20 reloads that change routes, then 3 binary upgrades
//! (SIGUSR2 self-upgrade, which runs Pingora's `-u` socket hand-over): no request may fail.

mod common;
use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pid_of(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn kill(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Stops whatever daemon the pid file names when the test ends, pass or fail.
struct Daemon(std::path::PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = pid_of(&self.0) {
            kill(pid, "INT");
        }
    }
}

fn config(dir: &std::path::Path, port: u16, upstream: &str, extra_route: bool) -> String {
    let extra = if extra_route {
        "[[routes]]\nname = \"extra\"\npaths = [\"=/extra\"]\nrespond = { body = \"extra\" }\n"
    } else {
        ""
    };
    format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
threads = 2
pid_file = "{dir}/pylon.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "2s"
shutdown_timeout = "1s"

[log]
level = "info"

[upstreams.echo]
targets = ["{upstream}"]

[[routes]]
name = "main"
paths = ["/"]
upstream = "echo"

{extra}"#,
        dir = dir.display()
    )
}

#[test]
fn reloads_and_upgrades_under_load_lose_nothing() {
    let e = echo("e", &[]);
    let dir = scratch();
    let port = free_port();
    let path = dir.join("pylon.toml");
    let pid_file = dir.join("pylon.pid");
    std::fs::write(&path, config(&dir, port, &e.addr, false)).unwrap();
    let _daemon = Daemon(pid_file.clone());
    let out = Command::new(PYLON)
        .args(["-d", "-c"])
        .arg(&path)
        .stderr(std::fs::File::create(dir.join("pylon.log")).unwrap())
        .status()
        .unwrap();
    assert!(out.success(), "pylon -d failed");
    // The daemon writes its pid file and binds after the foreground process returns.
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        if let Some(pid) = pid_of(&pid_file) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_for_port(port);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = format!("http://127.0.0.1:{port}/load");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures, url) =
                (stop.clone(), ok.clone(), failures.clone(), url.clone());
            std::thread::spawn(move || {
                let agent = agent();
                while !stop.load(Ordering::Relaxed) {
                    match agent.get(&url).call() {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        std::fs::write(&path, config(&dir, port, &e.addr, i % 2 == 1)).unwrap();
        kill(first, "HUP");
        std::thread::sleep(Duration::from_millis(150));
    }
    // The last reload (i = 19) added the `extra` route.
    let mut pid = first;
    for _ in 0..3 {
        // A process still taking over its sockets ignores SIGUSR2: ask until one acts on it.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut asked = Instant::now() - Duration::from_secs(1);
        let next = loop {
            if asked.elapsed() >= Duration::from_millis(500) {
                kill(pid, "USR2");
                asked = Instant::now();
            }
            match pid_of(&pid_file) {
                Some(p) if p != pid && alive(p) => break p,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no successor took over from {pid}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        pid = next;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let every old process finish its hand-over and drain while load continues.
    std::thread::sleep(Duration::from_secs(9));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(served > 1000, "too little load to mean anything: {served}");
    assert!(!alive(first), "the first process is still running");
    assert!(alive(pid));
    // The newest process serves the reloaded configuration.
    assert_eq!(get(&format!("http://127.0.0.1:{port}/extra")).body, "extra");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/x")).status, 200);
}
