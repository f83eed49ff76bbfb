//! Bodies judged before the upstream: a route whose filters need the body (a JSON edit, a WAF
//! reading bodies) reads it first, so a refusal leaves the upstream untouched and an edited body
//! goes out whole with its `content-length`; an early answer to an upload reaches a client that
//! reads only once it has sent everything.

mod common;
use common::recorder::Recorder;
use common::*;
use std::io::{Read, Write};

fn config(upstream: &str) -> String {
    format!(
        r#"
[upstreams.pool]
targets = ["{upstream}"]

[policies.edit]
kind = "request_transform"
json = {{ set = {{ "/gateway" = "pylon" }}, remove = ["/password"] }}
max_body = "256KiB"

[policies.guard]
kind = "waf"
max_body = "8KiB"

[policies.small]
kind = "request_limits"
max_body = "100KiB"

[[routes]]
name = "edit"
paths = ["/edit"]
upstream = "pool"
policies = ["edit", "small"]

[[routes]]
name = "guarded"
paths = ["/guarded"]
upstream = "pool"
policies = ["guard", "small"]

[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "pool"
policies = ["small"]
"#
    )
}

/// A head for `path` with a chunked body of `chunks`.
fn chunked(path: &str, content_type: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The recorder's answer to the one request it got: the head and body it read.
fn recorded(answer: &str) -> (String, serde_json::Value) {
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let sent: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    (v["head"].as_str().unwrap().to_ascii_lowercase(), sent)
}

#[test]
fn an_edited_body_reaches_an_upstream_that_reads_by_content_length_whole() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    let json = br#"{"user":"ann","password":"s3cret"}"#;
    let mut raw = format!(
        "POST /edit HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    raw.extend_from_slice(json);
    let (head, sent) = recorded(&send_raw(gw.port, &raw));
    assert_eq!(sent, serde_json::json!({"user": "ann", "gateway": "pylon"}));
    let length = sent.to_string().len();
    assert!(
        head.contains(&format!("\r\ncontent-length: {length}\r\n")),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");

    // Chunked by the client: the upstream still gets one body with its length.
    let raw = chunked(
        "/edit",
        "application/json",
        &[br#"{"user":"#, br#""bo","password":"x"}"#],
    );
    let (head, sent) = recorded(&send_raw(gw.port, &raw));
    assert_eq!(sent, serde_json::json!({"user": "bo", "gateway": "pylon"}));
    assert!(head.contains("\r\ncontent-length: "), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[test]
fn refused_bodies_leave_the_upstream_untouched() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    // The WAF refuses what the body says.
    let attack = b"q=1' OR '1'='1' --";
    let raw = chunked("/guarded", "application/x-www-form-urlencoded", &[attack]);
    let answer = send_raw(gw.port, &raw);
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    // Over the route's limit (100 KiB), chunked, so only counting tells.
    let doc = format!("{{\"a\":\"{}\"}}", "x".repeat(40 * 1024));
    let raw = chunked("/edit", "application/json", &[doc.as_bytes(); 3]);
    let answer = send_raw(gw.port, &raw);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // No length and more than Pingora can hand over: 411, said before the upstream.
    let raw = chunked("/edit", "application/json", &[doc.as_bytes(); 2]);
    let answer = send_raw(gw.port, &raw);
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    assert!(answer.contains("\"code\":\"length_required\""), "{answer}");
    assert_eq!(up.carried(), 0, "the upstream saw: {}", up.received());
}

#[test]
fn a_body_longer_than_the_waf_reads_is_judged_then_streams_whole() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    // 90 KB: more than the WAF's 8 KiB and Pingora's 64 KiB past it.
    let body: String = (0..15000)
        .map(|i| format!("{i:05}"))
        .collect::<Vec<_>>()
        .join(",");
    let json = format!("{{\"n\":\"{body}\"}}");
    let mut raw = format!(
        "POST /guarded HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    raw.extend_from_slice(json.as_bytes());
    let (head, sent) = recorded(&send_raw(gw.port, &raw));
    assert_eq!(sent["n"], body);
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", json.len())),
        "{head}"
    );
}

/// Send a whole upload, in pieces as a real upload arrives, before reading a byte of the
/// answer; the status line read then (or what failed).
fn upload_then_read(port: u16, raw: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    for piece in raw.chunks(8 * 1024) {
        if let Err(e) = s.write_all(piece) {
            return format!("write failed: {e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => return format!("error: {e}"),
        }
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_client_that_uploads_300_kib_before_reading_gets_the_413_ten_times_of_ten() {
    // An upstream that reads every body before it answers.
    let e = echo("e", &[]);
    let gw = gateway(&config(&e.addr));
    let body = vec![b'x'; 300 * 1024];
    let mut with_length = format!(
        "POST /plain HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    with_length.extend_from_slice(&body);
    let pieces: Vec<&[u8]> = body.chunks(16 * 1024).collect();
    for (what, route) in [("streamed", "/plain"), ("held", "/guarded")] {
        let chunked_upload = chunked(route, "text/plain", &pieces);
        for i in 0..10 {
            let status = upload_then_read(gw.port, &chunked_upload);
            assert!(
                status.starts_with("HTTP/1.1 413 "),
                "{what} chunked, try {i}: {status}"
            );
        }
    }
    for i in 0..10 {
        let status = upload_then_read(gw.port, &with_length);
        assert!(
            status.starts_with("HTTP/1.1 413 "),
            "content-length, try {i}: {status}"
        );
    }
}

/// POST `json` to `/edit` as a client that waits for `100 Continue` before its body: the
/// `100` is checked, then everything answered until the connection closes.
fn after_continue(port: u16, json: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /edit HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        json.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(json).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_client_that_waits_for_100_continue_gets_it_and_then_its_edit() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    let out = after_continue(gw.port, br#"{"user":"cy","password":"p"}"#);
    let (_, sent) = recorded(&out);
    assert_eq!(sent, serde_json::json!({"user": "cy", "gateway": "pylon"}));
}

#[test]
fn an_h2_body_is_edited_before_the_upstream_too() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data-binary", r#"{"user":"di","password":"q"}"#])
        .arg(gw.url("/edit"))
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, serde_json::json!({"user": "di", "gateway": "pylon"}));
    let head = v["head"].as_str().unwrap().to_ascii_lowercase();
    assert!(head.contains("\r\ncontent-length: "), "{head}");
}

#[test]
fn a_broken_chunk_on_a_held_route_gets_400_and_the_connection_is_not_reused() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let head = "POST /edit HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n";
    s.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    // A chunk size that is no number; then, as a lenient front end would send it, the next
    // request, which must not be read on a connection whose framing is lost.
    let _ = s.write_all(b"zz\r\n1}\r\n0\r\n\r\n");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _ = s.write_all(b"GET /edit/next HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert_eq!(up.carried(), 0, "the upstream saw: {}", up.received());
}

#[test]
fn expect_100_continue_gets_its_answer_when_no_upstream_can_take_it() {
    // Nothing listens on the target.
    let gw = gateway(&config(&format!("127.0.0.1:{}", free_port())));
    let out = after_continue(gw.port, br#"{"user":"ed"}"#);
    assert!(
        out.starts_with("HTTP/1.1 502 ") || out.starts_with("HTTP/1.1 503 "),
        "{out}"
    );
    assert!(out.contains("\"error\""), "{out}");
}

#[test]
fn an_early_answer_to_a_client_waiting_for_100_continue_closes_the_connection() {
    let up = Recorder::start();
    let gw = gateway(&config(&up.addr));
    // Over the route's limit by its declared length: refused before any 100.
    let head =
        "POST /plain HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n";
    let out = send_raw(gw.port, head.as_bytes());
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{out}"
    );
}

#[test]
fn an_h2_body_that_stalls_on_a_held_route_gets_408() {
    let up = Recorder::start();
    let gw = gateway_with_server("body_timeout = \"1s\"\n", &config(&up.addr));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(format!("http://127.0.0.1:{}/edit", gw.port))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"{\"a\":"), false)
            .unwrap();
        // And nothing more: the gateway gives up after `body_timeout`.
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), resp)
            .await
            .expect("an answer within the body timeout");
        drop(body);
        resp.map(|r| r.status().as_u16()).unwrap_or(0)
    });
    assert_eq!(status, 408);
    assert_eq!(up.carried(), 0);
}
