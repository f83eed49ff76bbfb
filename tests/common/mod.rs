//! Test harness: real `pylon` and `echo` processes on loopback ports, spoken to over real HTTP.
#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod idp;
pub mod node;
pub mod pki;
pub mod raw;
pub mod recorder;

#[allow(unused_imports)]
pub use raw::{send_raw, Raw, RawResp};

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const PYLON: &str = env!("CARGO_BIN_EXE_pylon");
pub const ECHO: &str = env!("CARGO_BIN_EXE_echo");

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh scratch directory for one test.
pub fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "pylon-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on right now, and never handed out before in this test
/// process: the tests of one binary run at once, and a port one of them holds free for a while
/// (a Redis Cluster started later) must not go to another's server meanwhile.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running echo upstream.
pub struct Echo {
    pub proc: Proc,
    pub addr: String,
}

/// Start an echo upstream named `name` with extra arguments (`--delay`, `--status`).
pub fn echo(name: &str, args: &[&str]) -> Echo {
    echo_on("127.0.0.1:0", name, args)
}

pub fn echo_on(listen: &str, name: &str, args: &[&str]) -> Echo {
    let mut child = Command::new(ECHO)
        .args(["--listen", listen, "--name", name])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start echo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("echo said {line:?}"))
        .to_string();
    Echo {
        proc: Proc(child),
        addr,
    }
}

/// Wait until something accepts connections on a loopback port.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !listening(port) {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether something listens on the loopback `port`. A connection whose own port is `port` is
/// no answer: with nothing listening, Linux may pick the target port as the client's ephemeral
/// port and connect the socket to itself (TCP simultaneous open).
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|s| s.local_addr().is_ok_and(|a| a.port() != port))
}

/// A `python3` running one of tests/py's scripts, with the packages `make test` installs
/// under target/py (`websockets`, `grpcio`, `grpcio-tools`) on its path.
pub fn python(script: &str) -> Command {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{root}/tests/py/{script}"))
        .env("PYTHONPATH", format!("{root}/target/py"));
    cmd
}

/// A server from tests/py (it takes its port first), once it printed `listening`.
pub fn python_server(script: &str, args: &[&str]) -> Proc {
    let mut child = python(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "listening",
        "{script} did not start: are its packages in target/py?"
    );
    Proc(child)
}

/// A running gateway.
pub struct Gateway {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    /// The `[server]` and `[log]` sections the harness wrote.
    head: String,
}

impl Gateway {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pylon.toml")
    }

    /// Replace the config file's upstreams and routes (the server section stays).
    pub fn rewrite(&self, rest: &str) {
        std::fs::write(self.config_path(), format!("{}{rest}", self.head)).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.proc.0.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.0.try_wait().unwrap().is_none()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Start pylon with `rest` (upstreams and routes) after a `[server]` section of its own.
pub fn gateway(rest: &str) -> Gateway {
    gateway_with_server("", rest)
}

/// Like [`gateway`], with extra `[server]` keys; `grace_period` and `shutdown_timeout` given
/// here replace the harness's one-second defaults.
pub fn gateway_with_server(server_keys: &str, rest: &str) -> Gateway {
    // A port from `free_port` may be taken by another test's process before pylon binds it;
    // pylon then exits, and the gateway is started again on another port.
    for _ in 0..3 {
        if let Some(gw) = try_gateway(server_keys, rest) {
            return gw;
        }
    }
    panic!("pylon did not start: see its log in the scratch directory");
}

fn try_gateway(server_keys: &str, rest: &str) -> Option<Gateway> {
    let dir = scratch();
    let port = free_port();
    let timing: String = ["grace_period = \"1s\"\n", "shutdown_timeout = \"1s\"\n"]
        .into_iter()
        .filter(|line| !server_keys.contains(line.split(' ').next().unwrap_or_default()))
        .collect();
    let head = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
threads = 2
pid_file = "{dir}/pylon.pid"
upgrade_sock = "{dir}/upgrade.sock"
{timing}{server_keys}

{log}
"#,
        dir = dir.display(),
        // A test that brings its own [log] section keeps it.
        log = if rest.contains("[log]") {
            ""
        } else {
            "[log]\nlevel = \"info\"\n"
        }
    );
    let path = dir.join("pylon.toml");
    std::fs::write(&path, format!("{head}{rest}")).unwrap();
    let child = Command::new(PYLON)
        .arg("-c")
        .arg(&path)
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("pylon.log")).unwrap(),
        ))
        .spawn()
        .expect("start pylon");
    let mut proc = Proc(child);
    let log = dir.join("pylon.log");
    let deadline = Instant::now() + Duration::from_secs(15);
    // Pingora logs this just before it binds the listeners.
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Service pylon spent")) {
        if proc.0.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "pylon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for_port(port);
    // Bound by pylon, not by someone else: it is still running after its bind.
    std::thread::sleep(Duration::from_millis(50));
    if proc.0.try_wait().unwrap().is_some() {
        return None;
    }
    Some(Gateway {
        proc,
        port,
        dir,
        head,
    })
}

/// An HTTP response, read whole.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The echo server that answered.
    pub fn server(&self) -> String {
        self.json()["server"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    // A fresh agent per request: a pooled connection could outlive the gateway it went to, and a
    // later test's gateway may get the same port. (tests/upgrade.rs exercises keep-alive.)
    let agent = agent();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent.run(builder.body(b.to_string()).unwrap()),
        None => agent.run(builder.body(()).unwrap()),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Resp {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

pub fn get(url: &str) -> Resp {
    request("GET", url, &[], None)
}

pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, None)
}

/// Assert a gateway error in the contract's JSON shape.
pub fn assert_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.body);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    assert_eq!(v["error"]["status"], status);
    assert_eq!(v["error"]["code"], code);
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let id = v["error"]["request_id"].as_str().unwrap();
    assert!(!id.is_empty());
    assert_eq!(resp.header("x-request-id"), Some(id));
}

/// Count which echo server answered `n` GETs.
pub fn spread(url: &str, n: usize) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        let r = get(url);
        assert_eq!(r.status, 200, "{}", r.body);
        *counts.entry(r.server()).or_insert(0) += 1;
    }
    counts
}

/// Poll `done` every 50 ms until it holds; fail the test after `limit`, saying `what`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private redis-server on a loopback port, without persistence.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::on(free_port())
    }

    /// Start (or restart) on a given port.
    pub fn on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (make test installs it)");
        let proc = Proc(child);
        wait_for_port(port);
        Redis { proc, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// Requests an echo upstream has served (besides health checks).
pub fn hits(e: &Echo) -> u64 {
    get(&format!("http://{}/_hits", e.addr))
        .body
        .trim()
        .parse()
        .unwrap()
}

/// The value of one series in the admin's `/metrics` (the line that starts with `series`),
/// 0 when absent.
pub fn metric(admin: u16, series: &str) -> f64 {
    get(&format!("http://127.0.0.1:{admin}/metrics"))
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The admin's `GET /upstreams` entry of one target (by its label).
pub fn target_state(admin: u16, upstream: &str, target: &str) -> serde_json::Value {
    let all = get(&format!("http://127.0.0.1:{admin}/upstreams")).json();
    all[upstream]["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == target).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// A private DNS server (dnsmasq) on a loopback port, answering from files the test edits:
/// `hosts` (A/AAAA, re-read on `reload`) and SRV records (applied by `restart`).
pub struct Dns {
    pub proc: Option<Proc>,
    pub port: u16,
    dir: PathBuf,
    srv: Vec<String>,
}

impl Dns {
    pub fn start(hosts: &str, srv: &[&str]) -> Dns {
        let mut dns = Dns {
            proc: None,
            port: free_port(),
            dir: scratch(),
            srv: srv.iter().map(|s| s.to_string()).collect(),
        };
        dns.set_hosts(hosts);
        dns.restart();
        dns
    }

    /// Replace the A/AAAA records (`IP NAME` lines); `reload` applies them.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(self.dir.join("hosts"), hosts).unwrap();
    }

    /// Re-read the hosts file (dnsmasq does on SIGHUP).
    pub fn reload(&self) {
        let pid = self.proc.as_ref().unwrap().0.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Stop answering.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// (Re)start on the same port.
    pub fn restart(&mut self) {
        self.proc = None;
        let mut cmd = Command::new("dnsmasq");
        cmd.arg("--keep-in-foreground")
            .arg(format!("--port={}", self.port))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--conf-file=/dev/null"])
            .arg(format!("--addn-hosts={}", self.dir.join("hosts").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .stderr(Stdio::null());
        for record in &self.srv {
            cmd.arg(format!("--srv-host={record}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let proc = Proc(cmd.spawn().expect("start dnsmasq (make test installs it)"));
            std::thread::sleep(Duration::from_millis(200));
            let mut proc = proc;
            if proc.0.try_wait().unwrap().is_none() {
                self.proc = Some(proc);
                return;
            }
            // The old process may still hold the port.
            assert!(Instant::now() < deadline, "dnsmasq did not start");
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A Redis Cluster of three primaries on loopback ports, made by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Option<Proc>>,
    pub ports: Vec<u16>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_on(RedisCluster::free_ports())
    }

    /// Three ports for nodes; each node also listens on its port + 10000 (the cluster bus).
    pub fn free_ports() -> Vec<u16> {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if p < 55_000
                && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
                && !ports.contains(&p)
            {
                ports.push(p);
            }
        }
        ports
    }

    pub fn urls_of(ports: &[u16]) -> Vec<String> {
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    pub fn start_on(ports: Vec<u16>) -> RedisCluster {
        let dir = scratch();
        let nodes = ports
            .iter()
            .map(|p| {
                let node_dir = dir.join(p.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let child = Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                    // With a node down, the others keep serving the slots they own.
                    .args(["--cluster-require-full-coverage", "no"])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start redis-server");
                Some(Proc(child))
            })
            .collect();
        for p in &ports {
            wait_for_port(*p);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli (make test installs redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, ports };
        wait_until(Duration::from_secs(20), "cluster_state:ok", || {
            cluster
                .ports
                .iter()
                .all(|p| cluster.info(*p).contains("cluster_state:ok"))
        });
        cluster
    }

    fn info(&self, port: u16) -> String {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "cluster", "info"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn urls(&self) -> Vec<String> {
        RedisCluster::urls_of(&self.ports)
    }

    /// Kill the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        self.nodes[i] = None;
    }
}
