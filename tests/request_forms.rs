//! Request targets, `Host` and framing values through the real gateway on raw sockets (RFC 9112
//! §3.2, RFC 9113 §8.2.1): what cannot be placed is refused before routing, with the upstream
//! seeing nothing; what can is forwarded in one canonical spelling.

mod common;
use common::recorder::Recorder;
use common::*;

/// `/admin` behind an API key; everything else open, on a catch-all route.
fn guarded(upstream: &str) -> Gateway {
    gateway(&format!(
        r#"
[upstreams.pool]
targets = ["{upstream}"]

[consumers.alice]
api_keys = ["k-alice"]

[policies.key]
kind = "api_key"

[[routes]]
name = "admin"
paths = ["/admin"]
upstream = "pool"
policies = ["key"]

[[routes]]
name = "all"
paths = ["/"]
upstream = "pool"
"#
    ))
}

#[test]
fn targets_that_are_no_form_get_400_and_the_upstream_sees_nothing() {
    let up = Recorder::start();
    let gw = guarded(&up.addr);
    let cases: &[&[u8]] = &[
        b"GET admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ./admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET x/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ?admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://a/admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://u@a/admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    ];
    for raw in cases {
        let answer = send_raw(gw.port, raw);
        let what = String::from_utf8_lossy(raw);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer}");
        assert!(
            answer.contains("\"code\":\"bad_request\""),
            "{what}: {answer}"
        );
    }
    let answer = send_raw(gw.port, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert_eq!(up.carried(), 0, "the upstream saw: {}", up.received());
}

#[test]
fn the_absolute_form_is_routed_by_its_authority_and_forwarded_in_origin_form() {
    let up = Recorder::start();
    let gw = guarded(&up.addr);
    // Behind the key like `/admin`.
    let answer = send_raw(
        gw.port,
        b"GET http://api.test/admin HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    // A Host that disagrees with the authority: two parsers could each believe one.
    let answer = send_raw(
        gw.port,
        b"GET http://api.test/ HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    assert_eq!(up.carried(), 0);
    let answer = send_raw(
        gw.port,
        b"GET http://api.test/admin?x=1 HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: k-alice\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let seen = up.received();
    assert!(seen.starts_with("GET /admin?x=1 HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("\r\nx-forwarded-host: api.test\r\n"),
        "{seen}"
    );
    // Asterisk form is for OPTIONS only.
    let answer = send_raw(
        gw.port,
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(!answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[test]
fn two_hosts_and_no_host_are_refused_but_http10_needs_none() {
    let up = Recorder::start();
    let gw = guarded(&up.addr);
    let answer = send_raw(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = send_raw(gw.port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(up.carried(), 0);
    let answer = send_raw(gw.port, b"GET / HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[test]
fn a_content_length_with_leading_zeros_goes_upstream_canonical() {
    let up = Recorder::start();
    let gw = guarded(&up.addr);
    let answer = send_raw(
        gw.port,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 010\r\nConnection: close\r\n\r\n0123456789",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let seen = up.received().to_ascii_lowercase();
    assert!(seen.contains("\r\ncontent-length: 10\r\n"), "{seen}");
    assert!(!seen.contains("content-length: 010"), "{seen}");
    assert!(seen.ends_with("\r\n\r\n0123456789"), "{seen}");
}

#[test]
fn an_h2_value_with_surrounding_whitespace_is_refused() {
    let up = Recorder::start();
    let gw = gateway(&format!(
        "[upstreams.pool]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"pool\"\n",
        up.addr
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statuses = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut statuses = Vec::new();
        for value in ["plain", " leading", "trailing\t", "in side"] {
            let mut client = client.clone().ready().await.unwrap();
            let req = http::Request::get(format!("http://127.0.0.1:{}/", gw.port))
                .header("x-a", http::HeaderValue::from_str(value).unwrap())
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            statuses.push(match resp.await {
                Ok(r) => r.status().as_u16(),
                // A stream error is as good a refusal.
                Err(_) => 0,
            });
        }
        statuses
    });
    assert_eq!(statuses[0], 200);
    assert!(matches!(statuses[1], 400 | 0), "{statuses:?}");
    assert!(matches!(statuses[2], 400 | 0), "{statuses:?}");
    assert_eq!(statuses[3], 200);
    assert!(!up.received().contains(" leading"), "{}", up.received());
    assert!(!up.received().contains("trailing\t"), "{}", up.received());
}
