//! WebSocket tunnels through the gateway between the Python `websockets` client and server
//! (installed under target/py by `make test`), with the default limits: the frames of an
//! upgraded connection are no request body, so neither `max_body` nor `body_timeout` cuts them.

mod common;
use common::*;
use std::time::Duration;

/// The echo server on a free port, once it accepts connections.
fn ws_echo() -> (Proc, u16) {
    let port = free_port();
    (python_server("ws_echo.py", &[&port.to_string()]), port)
}

/// A client script started, and what it prints, line by line.
fn running(
    mut cmd: std::process::Command,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    (child, out.lines())
}

/// Send messages of the given sizes on one tunnel; what the client printed.
fn client(gw: &Gateway, sizes: &[&str]) -> String {
    let out = python("ws_client.py")
        .arg(format!("ws://127.0.0.1:{}/ws", gw.port))
        .args(sizes)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn gateway_to(port: u16, server_keys: &str) -> Gateway {
    gateway_with_server(
        server_keys,
        &format!(
            "[upstreams.ws]\ntargets = [\"127.0.0.1:{port}\"]\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        ),
    )
}

#[test]
fn a_16_mib_message_and_fifty_1_mib_messages_echo_intact_with_the_default_limits() {
    let (_server, port) = ws_echo();
    let gw = gateway_to(port, "");
    let said = client(&gw, &["16777216", "1048576x50"]);
    assert!(said.contains("message 1: 16777216 bytes echoed"), "{said}");
    assert!(said.contains("message 51: 1048576 bytes echoed"), "{said}");
    assert!(said.trim_end().ends_with("ok"), "{said}");
}

#[test]
fn a_tunnel_quiet_longer_than_the_body_timeout_stays_open() {
    let (_server, port) = ws_echo();
    let gw = gateway_to(port, "body_timeout = \"1s\"\n");
    let out = python("ws_client.py")
        .arg(format!("ws://127.0.0.1:{}/ws", gw.port))
        .args(["10", "pause:2.5", "10"])
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("message 2: 10 bytes echoed"), "{said}");
}

#[test]
fn a_tunnel_is_counted_while_open_and_logged_once_when_it_closes() {
    let (_server, port) = ws_echo();
    let admin = free_port();
    let log = scratch().join("access.log");
    let gw = gateway(&format!(
        "[log]\naccess_log = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [upstreams.ws]\ntargets = [\"127.0.0.1:{port}\"]\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n",
        log.display()
    ));
    wait_for_port(admin);
    let mut client = python("ws_client.py")
        .arg(format!("ws://127.0.0.1:{}/ws", gw.port))
        .args(["1000", "pause:1.5", "2000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let open = || metric(admin, "pylon_websocket_connections{route=\"ws\"}");
    wait_until(Duration::from_secs(5), "the tunnel counted as open", || {
        open() == 1.0
    });
    assert!(client.wait().unwrap().success());
    wait_until(
        Duration::from_secs(2),
        "the tunnel counted as closed",
        || open() == 0.0,
    );
    assert_eq!(
        metric(admin, "pylon_websocket_connections_total{route=\"ws\"}"),
        1.0
    );
    // One line, written when the tunnel closed: its whole life and the bytes each way.
    let tunnels = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["status"] == 101)
            .collect()
    };
    wait_until(Duration::from_secs(2), "the tunnel's log line", || {
        !tunnels().is_empty()
    });
    let lines = tunnels();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line["duration_ms"].as_f64().unwrap() >= 1500.0, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() >= 3000, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() >= 3000, "{line}");
}

#[test]
fn a_tunnel_outlives_read_timeout_and_ends_after_tunnel_idle_timeout() {
    let (_server, port) = ws_echo();
    let log = scratch().join("access.log");
    let gw = gateway(&format!(
        "[log]\naccess_log = \"{}\"\n[upstreams.ws]\ntargets = [\"127.0.0.1:{port}\"]\n\
         read_timeout = \"1s\"\ntunnel_idle_timeout = \"3s\"\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n",
        log.display()
    ));
    // Quiet for twice `read_timeout`: kept.
    let said = client(&gw, &["10", "pause:2", "10"]);
    assert!(said.trim_end().ends_with("ok"), "{said}");
    // Quiet past `tunnel_idle_timeout`: closed by the gateway, so the client's next message
    // finds no tunnel.
    let out = python("ws_client.py")
        .arg(format!("ws://127.0.0.1:{}/ws", gw.port))
        .args(["10", "pause:4.5", "10"])
        .output()
        .expect("python3");
    assert!(!out.status.success(), "the idle tunnel was not closed");
    // Its log line says when: at the idle timeout, not when the client next spoke.
    let durations = || -> Vec<f64> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["status"] == 101)
            .filter_map(|l| l["duration_ms"].as_f64())
            .collect()
    };
    wait_until(Duration::from_secs(2), "both tunnels' log lines", || {
        durations().len() == 2
    });
    let closed = durations()[1];
    assert!(
        (3000.0..4000.0).contains(&closed),
        "closed after {closed} ms"
    );
}

#[test]
fn open_tunnels_get_a_going_away_close_frame_when_the_grace_period_ends() {
    let (_server, port) = ws_echo();
    let gw = gateway_to(port, "");
    let mut cmd = python("ws_client.py");
    cmd.arg(format!("ws://127.0.0.1:{}/ws", gw.port))
        .args(["100", "close"]);
    let (mut client, mut lines) = running(cmd);
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("100 bytes echoed"), "{line}");
    // Shutting down: after the grace period (the harness's 1s) the open tunnel is closed with
    // 1001, going away, rather than dropped.
    let start = std::time::Instant::now();
    gw.signal("TERM");
    let line = lines.next().unwrap().unwrap();
    assert_eq!(line.trim(), "closed 1001");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(client.wait().unwrap().success());
}

#[test]
fn a_thousand_tunnels_stay_open_at_once() {
    let (_server, port) = ws_echo();
    let admin = free_port();
    let gw = gateway_with_server(
        "max_connections_per_ip = 1100\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[upstreams.ws]\ntargets = [\"127.0.0.1:{port}\"]\n\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        ),
    );
    wait_for_port(admin);
    let mut cmd = python("ws_many.py");
    cmd.arg(format!("ws://127.0.0.1:{}/ws", gw.port))
        .arg("1000")
        .stdin(std::process::Stdio::piped());
    let (mut client, mut lines) = running(cmd);
    let line = lines.next().unwrap().unwrap();
    // Every tunnel opened and echoed its own message, and all are open now.
    assert_eq!(line.trim(), "holding 1000");
    assert_eq!(
        metric(admin, "pylon_websocket_connections{route=\"ws\"}"),
        1000.0
    );
    drop(client.stdin.take());
    let line = lines.next().unwrap().unwrap();
    assert_eq!(line.trim(), "closed");
    assert!(client.wait().unwrap().success());
    wait_until(
        Duration::from_secs(5),
        "every tunnel counted as closed",
        || metric(admin, "pylon_websocket_connections{route=\"ws\"}") == 0.0,
    );
}

/// An upstream whose `101` is on the wire before it reads the request, then echoes raw bytes:
/// the gateway reads that answer as soon as it has sent the request, while the end of the
/// request's own (empty) body is still queued. Pingora 0.9.1 took that end for the end of the
/// tunnel in about half such races (cloudflare/pingora#946, patched in vendor/pingora-proxy).
fn early_101_upstream() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                // Skip the request head, then echo whatever the tunnel carries.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_tunnel_whose_101_comes_before_the_request_is_read_stays_open() {
    use std::io::{BufRead, BufReader, Read, Write};
    let gw = gateway_to(early_101_upstream(), "");
    for i in 0..40 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            )
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 101"), "tunnel {i}: {status:?}");
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        let message = format!("tunnel {i}");
        stream.write_all(message.as_bytes()).unwrap();
        let mut echoed = vec![0u8; message.len()];
        reader
            .read_exact(&mut echoed)
            .unwrap_or_else(|e| panic!("tunnel {i} closed after its 101: {e}"));
        assert_eq!(echoed, message.as_bytes());
    }
}
