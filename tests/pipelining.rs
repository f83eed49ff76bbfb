//! Pipelined requests (RFC 9112 §9.3): every request on a connection is answered, in order,
//! whether it came in the same read as the one before or later, with or without a body.

mod common;
use common::*;

fn gateway_to(e: &Echo) -> Gateway {
    gateway(&format!(
        "[upstreams.pool]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"pool\"\n",
        e.addr
    ))
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: pylon.test\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: pylon.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn chunked(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: pylon.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
}

/// The paths (and bodies) of the next `n` answers on `raw`, in the order they came.
fn answers(raw: &mut Raw, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let r = raw.read_response(false);
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            (
                v["path"].as_str().unwrap().to_string(),
                v["body"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn paths(answers: &[(String, String)]) -> Vec<&str> {
    answers.iter().map(|(p, _)| p.as_str()).collect()
}

#[test]
fn two_and_ten_requests_in_one_write_are_all_answered_in_order() {
    let e = echo("e", &[]);
    let gw = gateway_to(&e);
    let mut raw = Raw::connect(gw.port);
    raw.write_all((get("/1") + &get("/2")).as_bytes());
    assert_eq!(paths(&answers(&mut raw, 2)), ["/1", "/2"]);

    let mut raw = Raw::connect(gw.port);
    let ten: String = (1..=10).map(|i| get(&format!("/{i}"))).collect();
    raw.write_all(ten.as_bytes());
    let expected: Vec<String> = (1..=10).map(|i| format!("/{i}")).collect();
    assert_eq!(paths(&answers(&mut raw, 10)), expected);
    // And the connection still serves the next one.
    raw.write_all(get("/11").as_bytes());
    assert_eq!(paths(&answers(&mut raw, 1)), ["/11"]);
}

#[test]
fn pipelined_requests_with_bodies_keep_their_bodies() {
    let e = echo("e", &[]);
    let gw = gateway_to(&e);
    let mut raw = Raw::connect(gw.port);
    let all = get("/a") + &post("/b", "body-b") + &chunked("/c", "body-c") + &get("/d");
    raw.write_all(all.as_bytes());
    let got = answers(&mut raw, 4);
    assert_eq!(paths(&got), ["/a", "/b", "/c", "/d"]);
    assert_eq!(got[1].1, "body-b");
    assert_eq!(got[2].1, "body-c");
    assert_eq!(got[3].1, "");
}

#[test]
fn a_request_sent_before_the_last_answer_arrived_is_answered() {
    // The echo takes its time, so the second request arrives while the first is upstream.
    let e = echo("e", &["--delay", "200ms"]);
    let gw = gateway_to(&e);
    let mut raw = Raw::connect(gw.port);
    raw.write_all(get("/first").as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    raw.write_all(get("/second").as_bytes());
    assert_eq!(paths(&answers(&mut raw, 2)), ["/first", "/second"]);
}

#[test]
fn a_bad_head_pipelined_behind_a_good_one_is_refused_in_the_contracts_shape() {
    let e = echo("e", &[]);
    let gw = gateway_to(&e);
    let mut raw = Raw::connect(gw.port);
    let smuggled = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    raw.write_all((get("/ok") + smuggled).as_bytes());
    assert_eq!(paths(&answers(&mut raw, 1)), ["/ok"]);
    let refused = raw.read_response(false);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["code"], "bad_request");
    assert_eq!(hits(&e), 1);
}

#[test]
fn a_bad_head_sent_while_the_one_before_is_upstream_is_refused_in_the_contracts_shape() {
    // Pingora reads ahead a byte while the first request is upstream; the rest of the second
    // head comes later, and the whole of it is still checked.
    let e = echo("e", &["--delay", "200ms"]);
    let gw = gateway_to(&e);
    let mut raw = Raw::connect(gw.port);
    raw.write_all(get("/slow").as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    raw.write_all(b"P");
    std::thread::sleep(std::time::Duration::from_millis(50));
    raw.write_all(b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(paths(&answers(&mut raw, 1)), ["/slow"]);
    let refused = raw.read_response(false);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["code"], "bad_request");
    assert_eq!(hits(&e), 1);
}
