//! Client keep-alive: Pylon's own loop waits for each request's first bytes, then hands the
//! connection to Pingora. Requests must come through whole however they are split, idle
//! connections must end on time, and shutdown must not wait for them.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn echo_gateway(e: &Echo, server_keys: &str) -> Gateway {
    gateway_with_server(
        server_keys,
        &format!(
            "[upstreams.echo]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"echo\"\n",
            e.addr
        ),
    )
}

fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One response: status, lower-cased head and body. `None` when the server closed the
/// connection before a byte of it.
fn read_response(s: &mut TcpStream) -> Option<(u16, String, String)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) if raw.is_empty() => return None,
            Ok(0) => panic!("connection closed inside a response head: {raw:?}"),
            Ok(_) => raw.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset && raw.is_empty() => return None,
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    let head = String::from_utf8(raw).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    Some((status, head, String::from_utf8(body).unwrap()))
}

fn path_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["path"].as_str().unwrap().to_string()
}

/// A GET for `path` on an open connection, answered 200 with the echo of `path`.
fn get_on(s: &mut TcpStream, path: &str) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let (status, _, body) = read_response(s).expect("connection kept open");
    assert_eq!(status, 200, "{body}");
    assert_eq!(path_of(&body), path);
}

/// The server closed the connection: a read returns end of file (or a reset).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

#[test]
fn one_connection_serves_many_requests() {
    let e = echo("e", &[]);
    let gw = echo_gateway(&e, "");
    let mut s = connect(&gw);
    for i in 0..50 {
        get_on(&mut s, &format!("/n/{i}"));
    }
}

#[test]
fn requests_split_into_pieces_arrive_whole() {
    let e = echo("e", &[]);
    let gw = echo_gateway(&e, "");
    let mut s = connect(&gw);
    s.set_nodelay(true).unwrap();
    // The first request of a connection, then one on the reused connection, each in
    // three writes with pauses between: the first piece is all the keep-alive loop sees.
    for name in ["first", "second"] {
        let request =
            format!("POST /split/{name} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        let (a, rest) = request.split_at(3);
        let (b, c) = rest.split_at(20);
        for piece in [a, b, c] {
            s.write_all(piece.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
        let (status, _, body) = read_response(&mut s).expect("a response");
        assert_eq!(status, 200, "{body}");
        assert_eq!(path_of(&body), format!("/split/{name}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["body"], "hello");
    }
    // A first read of just `P` could begin the HTTP/2 preface: it is put back and read again.
    let mut p = connect(&gw);
    p.set_nodelay(true).unwrap();
    p.write_all(b"P").unwrap();
    std::thread::sleep(Duration::from_millis(150));
    p.write_all(b"UT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let (status, _, body) = read_response(&mut p).expect("a response");
    assert_eq!(status, 200, "{body}");
    assert_eq!(path_of(&body), "/p");
}

#[test]
fn idle_connections_close_after_keepalive_timeout() {
    let e = echo("e", &[]);
    let gw = echo_gateway(&e, "keepalive_timeout = \"1s\"");
    // Idle after a request.
    let mut s = connect(&gw);
    get_on(&mut s, "/once");
    let idle = Instant::now();
    assert!(closed(&mut s));
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    // Silent from the start.
    let mut quiet = connect(&gw);
    let opened = Instant::now();
    assert!(closed(&mut quiet));
    assert!(opened.elapsed() < Duration::from_secs(4));
    // A connection that keeps talking within the timeout stays open past it.
    let mut busy = connect(&gw);
    for _ in 0..4 {
        get_on(&mut busy, "/busy");
        std::thread::sleep(Duration::from_millis(500));
    }
    // A reused connection that starts a request header and stalls: Pingora alone would wait
    // for the rest forever.
    let mut stalled = connect(&gw);
    get_on(&mut stalled, "/first");
    stalled
        .write_all(b"GET /never-finished HTTP/1.1\r\nHo")
        .unwrap();
    let began = Instant::now();
    assert!(
        closed(&mut stalled),
        "a stalled request header held the connection"
    );
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
}

#[test]
fn keepalive_requests_bounds_one_connection() {
    let e = echo("e", &[]);
    let gw = echo_gateway(&e, "keepalive_requests = 3");
    let mut s = connect(&gw);
    for i in 0..3 {
        get_on(&mut s, &format!("/r/{i}"));
    }
    // The third response was the last on this connection.
    assert!(closed(&mut s));
}

#[test]
fn shutdown_closes_idle_connections_at_once() {
    let e = echo("e", &[]);
    // A long shutdown timeout: idle connections must close when shutdown begins, at the end
    // of the grace period, not when the runtime is torn down 20 s later.
    let mut gw = echo_gateway(&e, "grace_period = \"1s\"\nshutdown_timeout = \"20s\"");
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect(&gw);
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s).unwrap().0, 200);
            s
        })
        .collect();
    let asked = Instant::now();
    gw.signal("TERM");
    for s in &mut idle {
        assert!(closed(s));
    }
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "idle connections closed after {took:?}"
    );
    wait_until(Duration::from_secs(25), "pylon to exit", || !gw.alive());
}
