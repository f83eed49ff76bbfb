//! Pylon run as a daemon (`-d`), as systemd and binary upgrades run it: found by its pid file.

use super::{wait_for_port, PYLON};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn pid_of(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn kill(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Stops whatever daemon the pid file names when the test ends, pass or fail.
pub struct Daemon(pub PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = pid_of(&self.0) {
            kill(pid, "INT");
        }
    }
}

/// Start `pylon -d -c config`, logging to `log`, and wait until the daemon named in `pid_file`
/// (a new one if `previous` names the last) listens on `port`; its pid.
pub fn start_daemon(
    config: &Path,
    log: &Path,
    pid_file: &Path,
    port: u16,
    previous: Option<i32>,
) -> i32 {
    let out = Command::new(PYLON)
        .args(["-d", "-c"])
        .arg(config)
        .stderr(std::fs::File::create(log).unwrap())
        .status()
        .unwrap();
    assert!(out.success(), "pylon -d failed");
    // The daemon writes its pid file and binds after the foreground process returns.
    let deadline = Instant::now() + Duration::from_secs(15);
    let pid = loop {
        match pid_of(pid_file) {
            Some(pid) if Some(pid) != previous && alive(pid) => break pid,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_for_port(port);
    pid
}

/// Ask the daemon `pid` to upgrade itself (SIGUSR2, Pingora's socket hand-over to a new
/// process) until a successor has taken over; the successor's pid.
pub fn upgrade(pid: i32, pid_file: &Path) -> i32 {
    // A process still taking over its sockets ignores SIGUSR2: ask until one acts on it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut asked = Instant::now() - Duration::from_secs(1);
    loop {
        if asked.elapsed() >= Duration::from_millis(500) {
            kill(pid, "USR2");
            asked = Instant::now();
        }
        match pid_of(pid_file) {
            Some(p) if p != pid && alive(p) => return p,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no successor took over from {pid}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `[server]` and `[log]` sections of a daemon listening on `port`, its files in `dir`,
/// draining for `grace` on upgrade.
pub fn server_section(dir: &Path, port: u16, grace: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
threads = 2
pid_file = "{dir}/pylon.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "{grace}"
shutdown_timeout = "1s"

[log]
level = "info"
"#,
        dir = dir.display()
    )
}
