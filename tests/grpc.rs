//! gRPC through the gateway, between the Python `grpcio` client and server (installed under
//! target/py by `make test`; their stubs compiled from tests/py/echo.proto when they start):
//! every kind of call over h2c and over TLS, and the gateway's own answers as gRPC statuses.

mod common;
use common::pki::Ca;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// The echo service on a free port, once it serves; its answers start with `name|`. `flags`:
/// `--down` answers every unary call `UNAVAILABLE`.
fn grpc_server(name: &str, flags: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let port_arg = port.to_string();
    let args = [&[port_arg.as_str(), name][..], flags].concat();
    (python_server("grpc_server.py", &args), port)
}

/// One call by the Python client (`tests/py/grpc_client.py`): the status it saw, its details
/// and the messages' texts.
fn call(target: &str, kind: &str, args: &[&str]) -> Value {
    let out = python("grpc_client.py")
        .args([target, kind])
        .args(args)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// An upstream of gRPC targets, spoken to in HTTP/2 by prior knowledge.
fn pool(name: &str, targets: &[String], extra: &str) -> String {
    format!("[upstreams.{name}]\ntargets = {targets:?}\nh2 = true\n{extra}\n")
}

#[test]
fn every_kind_of_call_goes_through_over_h2c_and_over_tls() {
    let (_server, port) = grpc_server("s1", &[]);
    let dir = scratch();
    let ca = Ca::new(&dir, "grpc");
    let cert = ca.server("grpc", "grpc.test", &["grpc.test"]);
    let tls_port = free_port();
    let gw = gateway_with_server(
        &format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.cert.display(),
            cert.key.display()
        ),
        &format!(
            "{}[[routes]]\nname = \"echo\"\npaths = [\"/echo.v1.Echo/\"]\nupstream = \"echo\"\n",
            pool("echo", &[format!("127.0.0.1:{port}")], "")
        ),
    );
    wait_for_port(tls_port);
    let plain = format!("127.0.0.1:{}", gw.port);
    let tls = format!("127.0.0.1:{tls_port}");
    let ca_pem = ca.pem.display().to_string();
    let tls_args = ["--tls", &ca_pem, "--authority", "grpc.test"];
    for (target, args) in [(&plain, &[][..]), (&tls, &tls_args[..])] {
        let r = call(target, "unary", args);
        assert_eq!(r["code"], "OK", "{r}");
        assert!(
            r["texts"][0].as_str().unwrap().starts_with("s1|hello|"),
            "{r}"
        );
        let r = call(target, "server", &[args, &["--count", "5"]].concat());
        assert_eq!(r["code"], "OK", "{r}");
        let texts: Vec<&str> = r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                "s1|hello-0",
                "s1|hello-1",
                "s1|hello-2",
                "s1|hello-3",
                "s1|hello-4"
            ]
        );
        let r = call(target, "client", args);
        assert_eq!(r["texts"][0], "s1|hello0+hello1+hello2", "{r}");
        let r = call(target, "bidi", args);
        assert_eq!(
            r["texts"],
            serde_json::json!(["s1|hello0", "s1|hello1", "s1|hello2"]),
            "{r}"
        );
    }
}

#[test]
fn the_gateways_own_answers_reach_grpc_clients_as_statuses_with_their_messages() {
    let (_server, port) = grpc_server("s1", &[]);
    let admin = free_port();
    let up = format!("127.0.0.1:{port}");
    // Routes told apart by a header the client sends as metadata.
    let route = |name: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npaths = [\"/echo.v1.Echo/\"]\nheaders = {{ x-case = \"{name}\" }}\nupstream = \"{upstream}\"\n{extra}\n"
        )
    };
    let log = scratch().join("access.log");
    let gw = gateway(&format!(
        "[log]\naccess_log = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}{}{}{}{}{}{}[policies.key]\nkind = \"api_key\"\n[policies.one]\nkind = \"rate_limit\"\nlimit = 1\nwindow = \"1m\"\n[consumers.app]\napi_keys = [\"k1\"]\n",
        log.display(),
        pool("echo", &[up], ""),
        // A target that refuses connections, found unhealthy by its first check.
        pool(
            "down",
            &["127.0.0.1:1".to_string()],
            "health_check = { kind = \"tcp\", interval = \"200ms\", unhealthy = 1 }"
        ),
        route("auth", "echo", "policies = [\"key\"]"),
        route("limit", "echo", "policies = [\"one\"]"),
        route("down", "down", ""),
        route(
            "shed",
            "down",
            "fallback = { status = 503, body = \"later\", grpc_status = \"RESOURCE_EXHAUSTED\", grpc_message = \"shed: retry in 1s\" }"
        ),
        route("ok", "echo", ""),
    ));
    wait_for_port(admin);
    let target = format!("127.0.0.1:{}", gw.port);
    let case = |name: &str, more: &[&str]| {
        let meta = format!("x-case={name}");
        call(&target, "unary", &[&["--meta", &meta][..], more].concat())
    };
    let expect = |r: Value, code: &str, details: &str| {
        assert_eq!(
            (r["code"].as_str(), r["details"].as_str()),
            (Some(code), Some(details)),
            "{r}"
        );
    };

    expect(
        case("auth", &[]),
        "UNAUTHENTICATED",
        "valid credentials are required",
    );
    assert_eq!(case("auth", &["--meta", "x-api-key=k1"])["code"], "OK");
    assert_eq!(case("limit", &[])["code"], "OK");
    expect(
        case("limit", &[]),
        "RESOURCE_EXHAUSTED",
        "too many requests; retry later",
    );
    wait_until(
        Duration::from_secs(5),
        "the down target's first check",
        || case("down", &[])["details"] == "no healthy upstream target is available",
    );
    expect(
        case("down", &[]),
        "UNAVAILABLE",
        "no healthy upstream target is available",
    );
    expect(case("shed", &[]), "RESOURCE_EXHAUSTED", "shed: retry in 1s");
    expect(
        case("nowhere", &[]),
        "UNIMPLEMENTED",
        "no route matches this request",
    );
    // Counted by the code the client saw, on its route (Prometheus sorts the labels).
    let count = |route: &str, code: &str| {
        metric(
            admin,
            &format!("pylon_grpc_requests_total{{code=\"{code}\",route=\"{route}\"}}"),
        )
    };
    assert_eq!(count("auth", "UNAUTHENTICATED"), 1.0);
    assert_eq!(count("auth", "OK"), 1.0);
    assert_eq!(count("limit", "RESOURCE_EXHAUSTED"), 1.0);
    assert_eq!(count("shed", "RESOURCE_EXHAUSTED"), 1.0);
    assert_eq!(count("_none", "UNIMPLEMENTED"), 1.0);
    // A failure the server itself answered, in its trailers-only response.
    expect(
        case("ok", &["--fail", "5"]),
        "NOT_FOUND",
        "s1 failed as asked",
    );
    assert_eq!(count("ok", "NOT_FOUND"), 1.0);
    // And in the access log, by name.
    wait_until(Duration::from_secs(2), "the access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(r#""status":200,"grpc_status":"UNAUTHENTICATED""#)
            && text.contains(r#""grpc_status":"NOT_FOUND""#)
    });
}

#[test]
fn an_unavailable_answer_is_retried_on_another_target_and_opens_its_breaker() {
    let (_down, down) = grpc_server("down", &["--down"]);
    let (_up, up) = grpc_server("up", &[]);
    let admin = free_port();
    let down = format!("127.0.0.1:{down}");
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}[[routes]]\nname = \"echo\"\npaths = [\"/echo.v1.Echo/\"]\nupstream = \"echo\"\n",
        pool(
            "echo",
            &[down.clone(), format!("127.0.0.1:{up}")],
            "retries = 1\ncircuit_breaker = { failures = 3, open_for = \"30s\" }"
        ),
    ));
    wait_for_port(admin);
    let target = format!("127.0.0.1:{}", gw.port);
    // Round robin sends every other call to `down` first: its trailers-only UNAVAILABLE
    // reached no client, so the call went on to `up`.
    for _ in 0..8 {
        let r = call(&target, "unary", &[]);
        assert_eq!(r["code"], "OK", "{r}");
        assert!(r["texts"][0].as_str().unwrap().starts_with("up|"), "{r}");
    }
    let retries = metric(
        admin,
        "pylon_upstream_retries_total{reason=\"grpc_unavailable\",upstream=\"echo\"}",
    );
    assert_eq!(
        retries, 3.0,
        "three failures open the breaker; then `down` gets none"
    );
    assert_eq!(target_state(admin, "echo", &down)["breaker"], "open");
}

/// A unary call as raw HTTP/2 (curl, prior knowledge): a client with no deadline of its own,
/// whose `grpc-timeout` only the gateway can honour. The response's headers and the seconds it
/// took.
fn raw_unary(port: u16, headers: &[&str], message: &[u8]) -> (String, f64) {
    let dir = scratch();
    let body = dir.join("call.bin");
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    std::fs::write(&body, frame).unwrap();
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
    ])
    .args(["-w", "took %{time_total}\n", "--data-binary"])
    .arg(format!("@{}", body.display()))
    .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/echo.v1.Echo/Unary"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let took = text
        .lines()
        .find_map(|l| l.strip_prefix("took "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    (text, took)
}

#[test]
fn deadlines_end_slow_calls_and_reach_the_target_as_the_time_left() {
    let (_server, port) = grpc_server("s1", &[]);
    // A target that accepts connections (the kernel completes the handshake) and never
    // answers: only the gateway can end a call there.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = |name: &str, upstream: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npaths = [\"/echo.v1.Echo/\"]\nheaders = {{ x-case = \"{name}\" }}\nupstream = \"{upstream}\"\n{extra}\n"
        )
    };
    let patient = "read_timeout = \"10s\"\nconnect_timeout = \"10s\"";
    let gw = gateway(&format!(
        "{}{}{}{}{}{}",
        pool("echo", &[format!("127.0.0.1:{port}")], patient),
        pool("hole", &[hole.local_addr().unwrap().to_string()], patient),
        route("tight", "echo", "timeout = \"1s\""),
        route("loose", "echo", ""),
        route("hole-tight", "hole", "timeout = \"1s\""),
        route("hole", "hole", ""),
    ));
    let target = format!("127.0.0.1:{}", gw.port);
    let within = |took: f64, deadline: f64| {
        assert!(
            took >= deadline && took <= deadline * 1.1,
            "ended after {took} s, the deadline was {deadline} s"
        );
    };
    let took = |r: &Value| r["took_ms"].as_f64().unwrap() / 1000.0;
    // The route's timeout ends a call whose client set none.
    let r = call(&target, "unary", &["--meta", "x-case=hole-tight"]);
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    assert_eq!(r["details"], "the upstream did not answer in time");
    within(took(&r), 1.0);
    // A client that only says `grpc-timeout` (and would wait for ever) is answered by the
    // gateway at that deadline.
    let (headers, t) = raw_unary(gw.port, &["x-case: hole", "grpc-timeout: 500m"], &[]);
    assert!(headers.contains("grpc-status: 4"), "{headers}");
    within(t, 0.5);
    // A slow target is told the deadline, and it or the gateway ends the call in time.
    let r = call(
        &target,
        "unary",
        &["--meta", "x-case=tight", "--delay", "3000"],
    );
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    within(took(&r), 1.0);
    // The target hears the tighter of the two deadlines as the time left.
    let left = |r: &Value| -> i64 {
        let text = r["texts"][0].as_str().unwrap_or_else(|| panic!("{r}"));
        text.rsplit('|').next().unwrap().parse().unwrap()
    };
    let r = call(
        &target,
        "unary",
        &["--meta", "x-case=tight", "--timeout", "5"],
    );
    assert!((800..=1000).contains(&left(&r)), "{r}");
    let r = call(
        &target,
        "unary",
        &["--meta", "x-case=loose", "--timeout", "0.5"],
    );
    assert!((300..=500).contains(&left(&r)), "{r}");
}

/// `Msg { text, count, fail }` as protobuf bytes, in a gRPC frame.
fn msg_frame(text: &str, count: u8, fail: u8) -> Vec<u8> {
    let mut m = vec![0x0a, text.len() as u8];
    m.extend_from_slice(text.as_bytes());
    if count > 0 {
        m.extend_from_slice(&[0x10, count]);
    }
    if fail > 0 {
        m.extend_from_slice(&[0x20, fail]);
    }
    let mut f = vec![0];
    f.extend_from_slice(&(m.len() as u32).to_be_bytes());
    f.extend(m);
    f
}

/// The frames of a gRPC-Web body: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "a partial frame: {body:?}");
    out
}

/// A gRPC-Web call over HTTP/1.1, as a browser on another origin makes it: the response's
/// headers (in lower case) and body.
fn grpc_web(port: u16, method: &str, content_type: &str, body: &[u8]) -> (String, Vec<u8>) {
    let dir = scratch();
    std::fs::write(dir.join("req"), body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "--http1.1", "-D", "-", "-o"])
        .arg(dir.join("resp"))
        .args(["-H", &format!("content-type: {content_type}")])
        .args(["-H", "x-grpc-web: 1", "-H", "origin: https://app.example"])
        .arg("--data-binary")
        .arg(format!("@{}", dir.join("req").display()))
        .arg(format!("http://127.0.0.1:{port}/echo.v1.Echo/{method}"))
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    (headers, std::fs::read(dir.join("resp")).unwrap_or_default())
}

#[test]
fn grpc_web_calls_in_binary_and_text_reach_a_grpc_server() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (_server, port) = grpc_server("s1", &[]);
    let gw = gateway(&format!(
        "{}[[routes]]\nname = \"web\"\npaths = [\"/echo.v1.Echo/\"]\nupstream = \"echo\"\npolicies = [\"web\", \"cors\"]\n\
         [policies.web]\nkind = \"grpc_web\"\n\
         [policies.cors]\nkind = \"cors\"\nallow_origins = [\"https://app.example\"]\nexpose_headers = [\"x-request-id\"]\n",
        pool("echo", &[format!("127.0.0.1:{port}")], "")
    ));
    // Binary: the message, then the trailers as a frame flagged 0x80.
    let (headers, body) = grpc_web(
        gw.port,
        "Unary",
        "application/grpc-web+proto",
        &msg_frame("hi", 0, 0),
    );
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(
        headers.contains("content-type: application/grpc-web+proto"),
        "{headers}"
    );
    // The browser may read the status: CORS exposes it beside what it was told to.
    assert!(
        headers.contains("access-control-expose-headers: x-request-id, grpc-status, grpc-message"),
        "{headers}"
    );
    let got = frames(&body);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, 0);
    assert!(String::from_utf8_lossy(&got[0].1).contains("s1|hi|"));
    assert_eq!(got[1].0, 0x80);
    assert!(String::from_utf8_lossy(&got[1].1).contains("grpc-status: 0\r\n"));
    // Text: base64 both ways, a server stream streamed.
    let (headers, body) = grpc_web(
        gw.port,
        "ServerStream",
        "application/grpc-web-text",
        b64.encode(msg_frame("t", 3, 0)).as_bytes(),
    );
    assert!(
        headers.contains("content-type: application/grpc-web-text+proto"),
        "{headers}"
    );
    let got = frames(&b64.decode(&body).unwrap());
    let texts: Vec<String> = got
        .iter()
        .map(|(_, m)| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(got.len(), 4, "{texts:?}");
    for (i, t) in texts[..3].iter().enumerate() {
        assert!(t.contains(&format!("s1|t-{i}")), "{t}");
    }
    assert_eq!(got[3].0, 0x80);
    // A call the server fails: its status in the answer's header (trailers-only).
    let (headers, _) = grpc_web(
        gw.port,
        "Unary",
        "application/grpc-web+proto",
        &msg_frame("x", 0, 5),
    );
    assert!(headers.contains("grpc-status: 5"), "{headers}");
    assert!(
        headers.contains("content-type: application/grpc-web+proto"),
        "{headers}"
    );
    // The gateway's own answer, likewise.
    let (headers, _) = grpc_web(gw.port, "Nope", "application/grpc-web", b"");
    assert!(headers.contains("grpc-status: 12"), "{headers}");
}

#[test]
fn a_browser_calls_a_grpc_server_in_binary_and_text_grpc_web_across_origins() {
    use common::browser::{chromium, Pages};
    let root = env!("CARGO_MANIFEST_DIR");
    // The page's client: Google's grpc-web from npm (under target/node), bundled by esbuild.
    let bundle = scratch().join("bundle.js");
    let built = std::process::Command::new(format!("{root}/target/node/node_modules/.bin/esbuild"))
        .arg(format!("{root}/tests/web/grpc_web.js"))
        .args(["--bundle", "--format=iife", "--global-name=GrpcWebTest"])
        .arg(format!("--outfile={}", bundle.display()))
        .env("NODE_PATH", format!("{root}/target/node/node_modules"))
        .output()
        .expect("esbuild (make test installs it under target/node)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let (_server, port) = grpc_server("s1", &[]);
    let pages = Pages::start();
    let gw = gateway(&format!(
        "{}[[routes]]\nname = \"web\"\npaths = [\"/echo.v1.Echo/\"]\nupstream = \"echo\"\npolicies = [\"web\", \"cors\"]\n\
         [policies.web]\nkind = \"grpc_web\"\n\
         [policies.cors]\nkind = \"cors\"\nallow_origins = [\"{}\"]\n",
        pool("echo", &[format!("127.0.0.1:{port}")], ""),
        pages.origin()
    ));
    pages.put(
        "/bundle.js",
        "text/javascript",
        std::fs::read(&bundle).unwrap(),
    );
    pages.put(
        "/",
        "text/html",
        format!(
            "<!doctype html><html><body><script src=\"/bundle.js\"></script><script>\n\
             GrpcWebTest.runAll('{}').then(r => fetch('/report?r=' + encodeURIComponent(r)));\n\
             </script></body></html>",
            gw.url("")
        ),
    );
    let _browser = chromium(&format!("{}/", pages.origin()));
    let report = pages
        .reports
        .recv_timeout(Duration::from_secs(60))
        .expect("the page reported nothing");
    assert_eq!(
        report,
        "binary:unary=s1|hi;stream=3;fail=5:s1 failed as asked|text:unary=s1|hi;stream=3;fail=5:s1 failed as asked"
    );
}
