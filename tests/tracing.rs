//! OTLP span export, received by a collector run by the test.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/HTTP endpoint that keeps every request body it is sent.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    // Keep-alive: one request after another on the connection.
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end().to_ascii_lowercase();
                            if line.is_empty() {
                                break;
                            }
                            if let Some(v) = line.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        kept.lock().unwrap().push(body);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        );
                    }
                });
            }
        });
        Collector { url, bodies }
    }

    /// Whether any export so far contains `bytes`.
    fn saw(&self, bytes: &[u8]) -> bool {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.windows(bytes.len()).any(|w| w == bytes))
    }
}

fn bytes(hex_digits: &str) -> Vec<u8> {
    hex::decode(hex_digits).unwrap()
}

#[test]
fn sampled_requests_are_exported_with_their_trace_ids() {
    let collector = Collector::start();
    let e = echo("e", &[]);
    let gw = gateway(&format!(
        r#"[tracing]
otlp_endpoint = "{}"
sample_ratio = 0.0
service_name = "pylon-under-test"

[upstreams.echo]
targets = ["{}"]

[[routes]]
name = "orders"
paths = ["/orders"]
upstream = "echo"
"#,
        collector.url, e.addr
    ));
    // Unsampled by the client, and a new trace under sample_ratio = 0: neither is recorded,
    // and the upstream is told so.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let r = get_with(
        &gw.url("/orders/1"),
        &[("traceparent", &format!("00-{quiet}-b7ad6b7169203331-00"))],
    );
    assert_eq!(r.status, 200);
    let fresh = get(&gw.url("/orders/2"));
    let fresh_parent = fresh.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fresh_parent.ends_with("-00"), "{fresh_parent}");

    // Sampled by the client: recorded, whatever the ratio.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = get_with(
        &gw.url("/orders/3"),
        &[("traceparent", &format!("00-{trace}-{client_span}-01"))],
    );
    let upstream_parent = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let gateway_span = &upstream_parent[36..52];

    wait_until(Duration::from_secs(10), "span export", || {
        collector.saw(&bytes(trace))
    });
    // The exported span is the one the upstream saw as its parent, child of the client's.
    assert!(collector.saw(&bytes(gateway_span)));
    assert!(collector.saw(&bytes(client_span)));
    for text in ["pylon-under-test", "GET orders", "http.route", "/orders/3"] {
        assert!(collector.saw(text.as_bytes()), "{text} not exported");
    }
    assert!(!collector.saw(&bytes(quiet)));
    assert!(!collector.saw(&bytes(&fresh_parent[3..35])));
    assert!(!collector.saw(b"/orders/1"));
}

#[test]
fn queued_spans_are_sent_on_shutdown() {
    let collector = Collector::start();
    let e = echo("e", &[]);
    let mut gw = gateway(&format!(
        "[tracing]\notlp_endpoint = \"{}\"\nexport_interval = \"1h\"\n[upstreams.echo]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"echo\"\n",
        collector.url, e.addr
    ));
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = get_with(
        &gw.url("/"),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    );
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    // Not sent yet: the interval is an hour.
    assert!(!collector.saw(&bytes(trace)));
    gw.signal("TERM");
    wait_until(Duration::from_secs(15), "pylon exit", || !gw.alive());
    assert!(
        collector.saw(&bytes(trace)),
        "the queued span was lost at shutdown"
    );
}
