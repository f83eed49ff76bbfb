//! TLS listeners: certificates chosen by SNI, TLS versions, HTTP/2 by ALPN, certificates
//! swapped by a reload, client certificates (mTLS) as consumers, and TLS to upstreams.

mod common;
use common::pki::{Ca, Client, Issued};
use common::*;
use openssl::ssl::SslVersion;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

fn cert_entry(hosts: Option<&[&str]>, issued: &Issued) -> String {
    let hosts = hosts.map_or(String::new(), |h| format!("hosts = {:?}, ", h));
    format!(
        "{{ {hosts}cert = \"{}\", key = \"{}\" }}",
        toml_path(&issued.cert),
        toml_path(&issued.key)
    )
}

/// A route to an echo upstream, `/` and everything under it.
fn echo_route(echo: &Echo, policies: &str) -> String {
    format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\npaths = [\"/\"]\nupstream = \"echo\"\npolicies = [{policies}]\n",
        echo.addr
    )
}

fn curl_h2(port: u16, host: &str, ca: &Path, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--http2", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), status.to_string())
}

#[test]
fn sni_chooses_the_certificate_and_http2_comes_by_alpn() {
    let dir = scratch();
    let ca = Ca::new(&dir, "sni");
    let api = ca.server("api", "api.example.com", &["api.example.com"]);
    let wild = ca.server("wild", "wildcard.example.org", &["*.example.org"]);
    let fallback = ca.server("fallback", "default.test", &["default.test"]);
    let echo = echo("tls-up", &[]);
    let port = free_port();
    let strict = free_port();
    let server = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{port}\"\ncertificates = [\n  {},\n  {},\n  {},\n]\ndefault_certificate = 2\n\n[[server.tls]]\nlisten = \"127.0.0.1:{strict}\"\nmin_version = \"1.3\"\nh2 = false\ncertificates = [{}]\n",
        cert_entry(Some(&["api.example.com"]), &api),
        // No hosts: the names are the certificate's own (its SAN).
        cert_entry(None, &wild),
        cert_entry(None, &fallback),
        cert_entry(None, &api),
    );
    let gw = gateway_with_server(&server, &echo_route(&echo, ""));
    wait_for_port(port);
    let cn = |sni: Option<&str>| {
        Client {
            sni,
            ..Client::default()
        }
        .connect(port)
        .unwrap()
        .server_cn
    };
    assert_eq!(cn(Some("api.example.com")), "api.example.com");
    assert_eq!(cn(Some("a.example.org")), "wildcard.example.org");
    // One label only, as RFC 6125 has it; unknown names and no SNI get the default.
    assert_eq!(cn(Some("a.b.example.org")), "default.test");
    assert_eq!(cn(Some("example.org")), "default.test");
    assert_eq!(cn(Some("other.test")), "default.test");
    assert_eq!(cn(None), "default.test");

    // Verified against the CA by name, and proxied with x-forwarded-proto: https.
    let mut conn = Client {
        sni: Some("api.example.com"),
        ca: Some(&ca.pem),
        ..Client::default()
    }
    .connect(port)
    .unwrap();
    let (status, body) = conn.get("api.example.com", "/hello").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["path"], "/hello");
    // The same connection serves the next request.
    assert_eq!(conn.get("api.example.com", "/again").unwrap().0, 200);

    // TLS 1.2 and 1.3 only; the strict listener only 1.3.
    for (version, ok) in [
        (SslVersion::TLS1_3, true),
        (SslVersion::TLS1_2, true),
        (SslVersion::TLS1_1, false),
    ] {
        let got = Client {
            sni: Some("api.example.com"),
            version: Some(version),
            ..Client::default()
        }
        .connect(port);
        assert_eq!(got.is_ok(), ok, "{version:?}: {:?}", got.err());
    }
    let tls13 = Client {
        version: Some(SslVersion::TLS1_3),
        ..Client::default()
    };
    assert_eq!(tls13.connect(strict).unwrap().version, "TLSv1.3");
    let tls12 = Client {
        version: Some(SslVersion::TLS1_2),
        ..Client::default()
    };
    assert!(tls12.connect(strict).is_err());

    // HTTP/2 over TLS, end to end; the listener without h2 answers HTTP/1.1.
    let (body, status) = curl_h2(port, "a.example.org", &ca.pem, "/h2");
    assert_eq!(status, "2 200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    let (_, status) = curl_h2(strict, "api.example.com", &ca.pem, "/h1");
    assert_eq!(status, "1.1 200");

    // The request-head checks hold over TLS too: a smuggling attempt gets the JSON 400.
    let mut conn = Client::default().connect(port).unwrap();
    let refused = conn
        .raw(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(refused.0, 400, "{}", refused.1);
    assert!(refused.1.contains("bad_request"), "{}", refused.1);
    assert_eq!(hits(&echo), 4);
    drop(gw);
}

#[test]
fn a_reload_swaps_certificates_and_keeps_connections() {
    let dir = scratch();
    let ca = Ca::new(&dir, "reload");
    let first = ca.server("site", "first.example.com", &["site.example.com"]);
    let echo = echo("tls-reload", &[]);
    let port = free_port();
    let server = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{port}\"\ncertificates = [{}]\n",
        cert_entry(None, &first)
    );
    let gw = gateway_with_server(&server, &echo_route(&echo, ""));
    wait_for_port(port);
    let client = Client {
        sni: Some("site.example.com"),
        ca: Some(&ca.pem),
        ..Client::default()
    };
    let mut old = client.connect(port).unwrap();
    assert_eq!(old.server_cn, "first.example.com");
    assert_eq!(old.get("site.example.com", "/").unwrap().0, 200);

    // New files at the same paths: a reload reads them.
    let second = ca.server("site", "second.example.com", &["site.example.com"]);
    assert_eq!(second.cert, first.cert);
    gw.signal("HUP");
    wait_until(Duration::from_secs(10), "the new certificate", || {
        client.connect(port).unwrap().server_cn == "second.example.com"
    });
    // The connection made before keeps working, on its old certificate.
    assert_eq!(old.get("site.example.com", "/still").unwrap().0, 200);
    assert_eq!(old.server_cn, "first.example.com");

    // A key that does not match: the reload is refused and the running certificate stays.
    let other = ca.server("other", "other.example.com", &["site.example.com"]);
    std::fs::copy(&other.key, &second.key).unwrap();
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    assert!(log.contains("does not belong to certificate"), "{log}");
    assert_eq!(
        client.connect(port).unwrap().server_cn,
        "second.example.com"
    );
}

#[test]
fn client_certificates_are_verified_and_name_the_consumer() {
    let dir = scratch();
    let ca = Ca::new(&dir, "server");
    let clients = Ca::new(&dir, "clients");
    let strangers = Ca::new(&dir, "strangers");
    let site = ca.server("site", "site.example.com", &["site.example.com"]);
    let alice = clients.client("alice", "alice.clients");
    let bob = clients.client("bob", "bob.clients");
    let mallory = strangers.client("mallory", "alice.clients");
    let echo = echo("mtls-up", &[]);
    let required = free_port();
    let optional = free_port();
    let server = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{required}\"\ncertificates = [{c}]\nclient_ca = \"{ca}\"\nclient_auth = \"required\"\n\n[[server.tls]]\nlisten = \"127.0.0.1:{optional}\"\ncertificates = [{c}]\nclient_ca = \"{ca}\"\nclient_auth = \"optional\"\n",
        c = cert_entry(None, &site),
        ca = toml_path(&clients.pem),
    );
    let rest = format!(
        "{}\n[[routes]]\nname = \"known\"\npaths = [\"/known\"]\nupstream = \"echo\"\npolicies = [\"strict-mtls\"]\n\n[policies.mtls]\nkind = \"client_cert\"\n\n[policies.strict-mtls]\nkind = \"client_cert\"\nconsumers_only = true\n\n[consumers.alice]\nclient_cert = \"alice.clients\"\ngroups = [\"gold\"]\n",
        echo_route(&echo, "\"mtls\"")
    );
    let _gw = gateway_with_server(&server, &rest);
    wait_for_port(required);
    wait_for_port(optional);
    let with = |cert: Option<&Issued>, port: u16, path: &str| -> Result<(u16, String), String> {
        Client {
            sni: Some("site.example.com"),
            ca: Some(&ca.pem),
            cert,
            ..Client::default()
        }
        .connect(port)?
        .get("site.example.com", path)
    };
    let consumer = |got: Result<(u16, String), String>| -> String {
        let (status, body) = got.unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["headers"]["x-consumer"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Required: a verified certificate passes and names its consumer; an unknown name is a
    // consumer of its own unless the policy wants configured consumers only.
    assert_eq!(consumer(with(Some(&alice), required, "/")), "alice");
    assert_eq!(consumer(with(Some(&bob), required, "/")), "bob.clients");
    assert_eq!(with(Some(&bob), required, "/known").unwrap().0, 403);
    assert_eq!(consumer(with(Some(&alice), required, "/known")), "alice");
    // No certificate, or one from another CA (with alice's name): no request gets through.
    assert!(with(None, required, "/").is_err());
    assert!(with(Some(&mallory), required, "/").is_err());
    // Optional: a client without one connects, and the policy answers 401.
    let (status, body) = with(None, optional, "/").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    assert_eq!(consumer(with(Some(&alice), optional, "/")), "alice");
    assert!(with(Some(&mallory), optional, "/").is_err());
    assert_eq!(hits(&echo), 4);
}

#[test]
fn upstreams_over_tls_with_a_private_ca_and_h2() {
    let dir = scratch();
    let ca = Ca::new(&dir, "upstream");
    let other = Ca::new(&dir, "elsewhere");
    let cert = ca.server("backend", "backend.internal", &["backend.internal"]);
    let args = [
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    let h2 = echo("tls-h2", &args);
    let mut h1_args = args.to_vec();
    h1_args.push("--no-h2");
    let h1 = echo("tls-h1", &h1_args);
    let plain = echo("h2c", &[]);
    let pool = |name: &str, e: &Echo, extra: &str| {
        format!(
            "[upstreams.{name}]\ntargets = [\"{}\"]\n{extra}\n[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nupstream = \"{name}\"\n\n",
            e.addr
        )
    };
    let ca_line = format!("ca = \"{}\"\n", toml_path(&ca.pem));
    let other_ca = format!("ca = \"{}\"\n", toml_path(&other.pem));
    let rest = [
        pool(
            "h2tls",
            &h2,
            &format!("tls = true\nsni = \"backend.internal\"\nh2 = true\n{ca_line}"),
        ),
        pool(
            "h1tls",
            &h1,
            &format!("tls = true\nsni = \"backend.internal\"\nh2 = true\n{ca_line}"),
        ),
        pool(
            "plain1",
            &h2,
            &format!("tls = true\nsni = \"backend.internal\"\n{ca_line}"),
        ),
        pool(
            "badname",
            &h2,
            &format!("tls = true\nsni = \"wrong.internal\"\n{ca_line}"),
        ),
        pool(
            "badca",
            &h2,
            &format!("tls = true\nsni = \"backend.internal\"\n{other_ca}"),
        ),
        pool(
            "noverify",
            &h2,
            "tls = true\nsni = \"wrong.internal\"\nverify = false\n",
        ),
        pool("h2c", &plain, "h2 = true\n"),
    ]
    .concat();
    let gw = gateway(&rest);
    let version = |path: &str| {
        let resp = get(&gw.url(path));
        assert_eq!(resp.status, 200, "{path}: {}", resp.body);
        resp.json()["version"].as_str().unwrap().to_string()
    };
    assert_eq!(version("/h2tls"), "HTTP/2.0");
    // The target offers only HTTP/1.1 by ALPN: h2 falls back.
    assert_eq!(version("/h1tls"), "HTTP/1.1");
    assert_eq!(version("/plain1"), "HTTP/1.1");
    assert_eq!(version("/noverify"), "HTTP/1.1");
    assert_eq!(version("/h2c"), "HTTP/2.0");
    // A certificate for another name, or from another CA: never sent to.
    for path in ["/badname", "/badca"] {
        let resp = get(&gw.url(path));
        assert_eq!(resp.status, 502, "{path}: {}", resp.body);
        assert!(resp.body.contains("bad_gateway"), "{}", resp.body);
        assert!(
            !resp.body.contains("certificate"),
            "no detail leaks: {}",
            resp.body
        );
    }
}

#[test]
fn check_names_the_certificate_file_at_fault() {
    let dir = scratch();
    let ca = Ca::new(&dir, "check");
    let a = ca.server("a", "a.test", &["a.test"]);
    let b = ca.server("b", "b.test", &["b.test"]);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let config = dir.join("pylon.toml");
    std::fs::write(
        &config,
        format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:1\"\ncertificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n]\n",
            toml_path(&a.cert),
            toml_path(&b.key),
            toml_path(&garbage),
            toml_path(&b.key),
        ),
    )
    .unwrap();
    let out = Command::new(PYLON)
        .arg("-t")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let at = |line: usize, words: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("{}:{line}:", config.display())) && l.contains(words))
    };
    assert!(
        at(
            4,
            &format!("key {:?} does not belong to certificate", toml_path(&b.key))
        ),
        "{stderr}"
    );
    assert!(
        at(
            5,
            &format!("certificate {:?} is not valid PEM", toml_path(&garbage))
        ),
        "{stderr}"
    );
}

/// A certificate's notAfter in seconds since the epoch, read from its file.
fn not_after(cert: &Path) -> i64 {
    let cert = openssl::x509::X509::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
    let diff = epoch.diff(cert.not_after()).unwrap();
    i64::from(diff.days) * 86_400 + i64::from(diff.secs)
}

#[test]
fn each_certificates_expiry_is_a_metric_and_a_near_one_a_warning() {
    let dir = scratch();
    let ca = Ca::new(&dir, "expiry");
    let short = ca.server_for_days("short", "short.example.com", &["short.example.com"], 5);
    let long = ca.server_for_days("long", "long.example.com", &["long.example.com"], 60);
    let echo = echo("tls-expiry", &[]);
    let (port, admin) = (free_port(), free_port());
    let server = format!(
        "cert_expiry_warning = \"14d\"\n\n[[server.tls]]\nlisten = \"127.0.0.1:{port}\"\ncertificates = [{}, {}]\n",
        cert_entry(None, &short),
        cert_entry(None, &long)
    );
    let rest = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n{}",
        echo_route(&echo, "")
    );
    let gw = gateway_with_server(&server, &rest);
    wait_for_port(admin);
    let series = |name: &str| {
        format!("pylon_tls_certificate_expiry_timestamp_seconds{{listener=\"127.0.0.1:{port}\",name=\"{name}\"}}")
    };
    wait_until(Duration::from_secs(5), "the expiry gauges", || {
        metric(admin, &series("long.example.com")) > 0.0
    });
    assert_eq!(
        metric(admin, &series("short.example.com")) as i64,
        not_after(&short.cert)
    );
    assert_eq!(
        metric(admin, &series("long.example.com")) as i64,
        not_after(&long.cert)
    );
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    assert!(log.contains("(short.example.com) on 127.0.0.1:"), "{log}");
    // Five days less the seconds since it was issued.
    assert!(
        log.contains("expires in 4 days") || log.contains("expires in 5 days"),
        "{log}"
    );
    assert!(!log.contains("(long.example.com)"), "{log}");

    // Renewed in place: a reload reads the new notAfter, and warns no more.
    let renewed = ca.server_for_days("short", "short.example.com", &["short.example.com"], 90);
    gw.signal("HUP");
    wait_until(Duration::from_secs(10), "the renewed expiry", || {
        metric(admin, &series("short.example.com")) as i64 == not_after(&renewed.cert)
    });
    let log = std::fs::read_to_string(gw.dir.join("pylon.log")).unwrap();
    assert_eq!(log.matches("(short.example.com) on").count(), 1, "{log}");
}
