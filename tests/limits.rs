//! Request limits through the real gateway: the defaults with no policy at all (431, 414, 413
//! before the upstream sees anything), a route's own `request_limits`, a chunked body cut at
//! its limit, and the same answers over HTTP/2.

mod common;
use common::*;
use std::io::Write;

fn config(e: &Echo) -> String {
    format!(
        r#"[upstreams.pool]
targets = ["{addr}"]

[policies.small]
kind = "request_limits"
max_body = "1KiB"
max_headers = 20

[policies.roomy]
kind = "request_limits"
max_uri_bytes = "32KiB"

[[routes]]
name = "small"
paths = ["/small"]
upstream = "pool"
policies = ["small"]

[[routes]]
name = "roomy"
paths = ["/roomy"]
upstream = "pool"
policies = ["roomy"]

[[routes]]
name = "plain"
upstream = "pool"
"#,
        addr = e.addr
    )
}

#[test]
fn defaults_apply_with_no_policy() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let before = hits(&e);
    let mut c = Raw::connect(gw.port);
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = c.send("GET", "/x", &many, b"");
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "request_header_too_large");
    let big = "v".repeat(33 << 10);
    let r = Raw::connect(gw.port).send("GET", "/x", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431);
    let uri = format!("/x?q={}", "a".repeat(9 << 10));
    let r = Raw::connect(gw.port).send("GET", &uri, &[], b"");
    assert_eq!(r.status, 414);
    assert_eq!(r.json()["error"]["code"], "uri_too_long");
    // A declared body over 10 MiB: refused on its header, before a byte of it is read.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11534336\r\n\r\n")
        .unwrap();
    let r = read_raw(s);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(hits(&e), before, "the upstream saw none of these");
    // What is within the limits goes through.
    assert_eq!(get(&gw.url("/x")).status, 200);
}

#[test]
fn a_routes_own_limits_replace_the_defaults() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let uri = format!("/roomy?q={}", "a".repeat(9 << 10));
    assert_eq!(get(&gw.url(&uri)).status, 200, "32 KiB allowed here");
    let headers: Vec<(String, String)> = (0..21).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        Raw::connect(gw.port)
            .send("GET", "/small", &headers, b"")
            .status,
        431
    );
    let before = hits(&e);
    let r = Raw::connect(gw.port).send("POST", "/small", &[], &[b'x'; 2048]);
    assert_eq!(r.status, 413);
    assert_eq!(hits(&e), before);
}

#[test]
fn a_chunked_body_is_cut_at_its_limit() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut req = b"POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'y'; 0x400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = s.write_all(&req);
    let r = read_raw(s);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("payload_too_large"), "{r}");
}

#[test]
fn the_same_limits_over_http2() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let big = format!("x-big: {}", "v".repeat(33 << 10));
    assert_eq!(curl(&["-H", &big, &gw.url("/x")]), "2 431");
    let uri = gw.url(&format!("/x?q={}", "a".repeat(9 << 10)));
    assert_eq!(curl(&[&uri]), "2 414");
    // Answered from `content-length` while the client is still sending: under load the h2
    // stream is sometimes reset before the 413 goes out (Pingora resets a stream whose body is
    // unread, and h2 then drops its queued frames), so it gets three tries. The upstream never
    // sees any of them.
    let body = "z".repeat(2048);
    let before = hits(&e);
    let answers: Vec<String> = (0..3)
        .map(|_| curl(&["--data-binary", &body, &gw.url("/small")]))
        .collect();
    assert!(answers.iter().any(|a| a == "2 413"), "{answers:?}");
    assert!(
        answers.iter().all(|a| a == "2 413" || a == "0 000"),
        "{answers:?}"
    );
    assert_eq!(hits(&e), before);
    assert_eq!(curl(&[&gw.url("/x")]), "2 200");
}

/// Everything the server sends until it closes (or 10 s pass).
fn read_raw(mut s: std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}}") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Send `head` a byte at a time, `gap` apart; how long until the server closed the
/// connection (or `None` if the whole head went through and it answered).
fn dribble(port: u16, head: &[u8], gap: std::time::Duration) -> Option<std::time::Duration> {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for b in head {
        if s.write_all(&[*b]).is_err() {
            return Some(started.elapsed());
        }
        std::thread::sleep(gap);
    }
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => Some(started.elapsed()),
        Ok(_) => None,
    }
}

#[test]
fn a_slowloris_client_is_cut_off_at_the_header_timeout() {
    let e = echo("e", &[]);
    let gw = gateway_with_server("header_timeout = \"1s\"\n", &config(&e));
    let gap = std::time::Duration::from_millis(200);
    // 14 bytes of request line and then header bytes forever: cut at about one second.
    let head = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: {}", "s".repeat(40));
    let cut = dribble(gw.port, head.as_bytes(), gap).expect("cut off");
    assert!(cut < std::time::Duration::from_secs(3), "cut after {cut:?}");
    // On a kept-alive connection the second request's header has the same deadline.
    let mut raw = Raw::connect(gw.port);
    assert_eq!(raw.send("GET", "/x", &[], b"").status, 200);
    let started = std::time::Instant::now();
    let mut closed = false;
    for b in head.as_bytes() {
        if raw.write_byte(*b).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(gap);
    }
    assert!(
        closed || raw.closed(),
        "the kept-alive connection was not cut"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    // A client that sends its header in time, however slowly its bytes come, is served.
    let quick = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(
        dribble(gw.port, quick, std::time::Duration::from_millis(20)),
        None
    );
}

#[test]
fn one_address_holds_at_most_its_connection_cap() {
    let e = echo("e", &[]);
    let gw = gateway_with_server("max_connections_per_ip = 2\n", &config(&e));
    let mut first = Raw::connect(gw.port);
    let mut second = Raw::connect(gw.port);
    assert_eq!(first.send("GET", "/x", &[], b"").status, 200);
    assert_eq!(second.send("GET", "/x", &[], b"").status, 200);
    // Both stay open (kept alive): a third from the same address is turned away.
    let third = Raw::connect(gw.port).send("GET", "/x", &[], b"");
    assert_eq!(third.status, 429);
    assert_eq!(third.json()["error"]["code"], "rate_limited");
    assert_eq!(
        first.send("GET", "/x", &[], b"").status,
        200,
        "the held ones still work"
    );
    drop(first);
    // A closed connection frees its place (once the gateway has seen it close).
    wait_until(std::time::Duration::from_secs(5), "a place freed", || {
        Raw::connect(gw.port).send("GET", "/x", &[], b"").status == 200
    });
}
