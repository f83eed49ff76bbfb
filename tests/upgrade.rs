//! Under constant load: 20 reloads that change routes, then 3 binary upgrades
//! (SIGUSR2 self-upgrade, which runs Pingora's `-u` socket hand-over): no request may fail.

mod common;
use common::daemon::*;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(dir: &std::path::Path, port: u16, upstream: &str, extra_route: bool) -> String {
    let extra = if extra_route {
        "[[routes]]\nname = \"extra\"\npaths = [\"=/extra\"]\nrespond = { body = \"extra\" }\n"
    } else {
        ""
    };
    format!(
        r#"{server}
[upstreams.echo]
targets = ["{upstream}"]

[[routes]]
name = "main"
paths = ["/"]
upstream = "echo"

{extra}"#,
        server = server_section(dir, port, "2s")
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
    let first = start_daemon(&path, &dir.join("pylon.log"), &pid_file, port, None);

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
        pid = upgrade(pid, &pid_file);
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
