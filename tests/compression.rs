//! Response compression through the real gateway: gzip, brotli and zstd negotiated by
//! `Accept-Encoding` (decoded here and compared), never below `min_size`, never for excluded
//! types, never twice, and never on a route without the policy.

mod common;
use common::*;
use std::io::Read;

fn config(e: &Echo) -> String {
    format!(
        r#"[upstreams.pool]
targets = ["{addr}"]

[policies.squeeze]
kind = "compression"
algorithms = ["zstd", "br", "gzip"]
min_size = "1KiB"
content_types = ["application/json", "text/*"]

[policies.edit]
kind = "response_transform"
json = {{ set = {{ "/edited" = true }} }}

[[routes]]
name = "zipped"
hosts = ["zip.test"]
upstream = "pool"
policies = ["squeeze"]

[[routes]]
name = "edited"
hosts = ["edit.test"]
upstream = "pool"
policies = ["squeeze", "edit"]

[[routes]]
name = "plain"
upstream = "pool"
"#,
        addr = e.addr
    )
}

/// `/_reply` answering `body` repeated `n` times as `ty`.
fn reply(ty: &str, body: &str, n: usize, extra: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("type", ty)
        .append_pair("body", body)
        .append_pair("repeat", &n.to_string())
        .finish();
    format!("/_reply?{q}{extra}")
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

const PIECE: &str = r#"{"item":"a fairly repetitive JSON document","n":12345},"#;

#[test]
fn negotiated_by_accept_encoding_and_decoded_back() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let path = reply("application/json", PIECE, 200, "");
    let original = PIECE.repeat(200);
    let mut c = Raw::connect(gw.port);
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br, zstd", "zstd"),
        ("gzip;q=1.0, br;q=0.8, zstd;q=0.5", "gzip"),
        ("br;q=0.9, *;q=0.1", "br"),
    ] {
        let r = c.send(
            "GET",
            &path,
            &[("host", "zip.test"), ("accept-encoding", accept)],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(expected), "for {accept}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert_eq!(r.header("content-length"), None);
        assert!(
            r.body.len() < original.len() / 5,
            "{accept}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(expected, &r.body), original.as_bytes(), "{accept}");
    }
    // Nothing acceptable: the body as it is, still marked as varying.
    let r = c.send(
        "GET",
        &path,
        &[
            ("host", "zip.test"),
            ("accept-encoding", "gzip;q=0, deflate"),
        ],
        b"",
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.body, original.as_bytes());
}

#[test]
fn only_where_it_is_worth_it() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let mut c = Raw::connect(gw.port);
    let accept = [("host", "zip.test"), ("accept-encoding", "gzip")];
    // Below min_size.
    let r = c.send("GET", &reply("application/json", "{}", 1, ""), &accept, b"");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, b"{}");
    // An excluded type.
    let r = c.send("GET", &reply("image/png", "x", 5000, ""), &accept, b"");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some("5000"));
    // Already compressed by the target: passed on once, not again.
    let r = c.send(
        "GET",
        &reply("text/plain", "hello ", 1000, "&gzip=1"),
        &accept,
        b"",
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), "hello ".repeat(1000).as_bytes());
    // A route without the policy never compresses.
    let r = c.send(
        "GET",
        &reply("application/json", PIECE, 200, ""),
        &[("accept-encoding", "gzip, br, zstd")],
        b"",
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.body.len(), PIECE.len() * 200);
}

#[test]
fn a_body_edit_then_compression_and_a_gzipped_upstream_body_edited() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let mut c = Raw::connect(gw.port);
    let doc = format!(r#"{{"pad":"{}"}}"#, "y".repeat(4000));
    for extra in ["", "&gzip=1"] {
        let r = c.send(
            "GET",
            &reply("application/json", &doc, 1, extra),
            &[("host", "edit.test"), ("accept-encoding", "br")],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("br"), "{extra}");
        let v: serde_json::Value = serde_json::from_slice(&decode("br", &r.body)).unwrap();
        assert_eq!(v["edited"], true);
        assert_eq!(v["pad"].as_str().unwrap().len(), 4000);
    }
}
