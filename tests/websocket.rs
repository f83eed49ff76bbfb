//! WebSocket tunnels through the gateway between the Python `websockets` client and server
//! (installed under target/py by `make test`), with the default limits: the frames of an
//! upgraded connection are no request body, so neither `max_body` nor `body_timeout` cuts them.

mod common;
use common::*;

/// The echo server on a free port, once it accepts connections.
fn ws_echo() -> (Proc, u16) {
    let port = free_port();
    (python_server("ws_echo.py", &[&port.to_string()]), port)
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
