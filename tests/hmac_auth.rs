//! `hmac_auth` against a real pylon: requests signed as Kong's hmac-auth clients sign them.

mod common;
use base64::Engine;
use common::*;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use std::time::{Duration, SystemTime};

const SECRET: &str = "s3cret-of-hooks";

fn gateway_signed(e: &Echo) -> (Gateway, u16) {
    let admin = free_port();
    let gw = gateway(&format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[upstreams.e]
targets = ["{}"]

[consumers.hooks]
hmac_secret = "{SECRET}"
groups = ["partners"]

[policies.webhooks]
kind = "hmac_auth"
algorithms = ["hmac-sha256", "hmac-sha512"]
clock_skew = "60s"
enforce_headers = ["date", "request-line", "digest"]
validate_body = true
replay_protection = true

[[routes]]
name = "hooks"
upstream = "e"
policies = ["webhooks"]
"#,
        e.addr
    ));
    wait_for_port(admin);
    (gw, admin)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The headers of a request signed with `secret`: `date`, `digest` of `body`, and the
/// `Authorization` over date, request line and digest.
fn signed(path: &str, body: &str, secret: &str, at: SystemTime) -> Vec<(String, String)> {
    let date = httpdate::fmt_http_date(at);
    let digest = format!(
        "SHA-256={}",
        b64(&openssl::hash::hash(MessageDigest::sha256(), body.as_bytes()).unwrap())
    );
    let text = format!("date: {date}\nPOST {path} HTTP/1.1\ndigest: {digest}");
    let key = PKey::hmac(secret.as_bytes()).unwrap();
    let signature = Signer::new(MessageDigest::sha256(), &key)
        .unwrap()
        .sign_oneshot_to_vec(text.as_bytes())
        .unwrap();
    let authorization = format!(
        "hmac username=\"hooks\", algorithm=\"hmac-sha256\", headers=\"date request-line digest\", signature=\"{}\"",
        b64(&signature)
    );
    vec![
        ("date".into(), date),
        ("digest".into(), digest),
        ("authorization".into(), authorization),
    ]
}

fn post(gw: &Gateway, path: &str, headers: &[(String, String)], body: &str) -> Resp {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    request("POST", &gw.url(path), &headers, Some(body))
}

fn refusals(admin: u16, reason: &str) -> f64 {
    metric(
        admin,
        &format!(
            "pylon_auth_failures_total{{policy=\"webhooks\",reason=\"{reason}\",route=\"hooks\"}}"
        ),
    )
}

#[test]
fn signed_requests_pass_and_every_kind_of_bad_one_is_refused() {
    let e = echo("e", &[]);
    let (gw, admin) = gateway_signed(&e);
    let now = SystemTime::now();
    let body = r#"{"event":"paid","id":7}"#;

    // A good signature: the upstream gets the body, the consumer, and no Authorization.
    let good = signed("/hooks/paid", body, SECRET, now);
    let ok = post(&gw, "/hooks/paid", &good, body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = ok.json();
    assert_eq!(seen["body"], body);
    assert_eq!(seen["headers"]["x-consumer"], "hooks");
    assert!(seen["headers"].get("authorization").is_none());

    // The same request again: a replay.
    assert_eq!(post(&gw, "/hooks/paid", &good, body).status, 401);
    assert_eq!(refusals(admin, "replayed"), 1.0);

    // Another secret.
    let wrong = signed("/hooks/paid", body, "not-the-secret", now);
    let refused = post(&gw, "/hooks/paid", &wrong, body);
    assert_eq!(refused.status, 401);
    assert!(refused
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("hmac")));
    assert_eq!(refusals(admin, "invalid_signature"), 1.0);

    // A date outside the skew, either way.
    for off in [-120i64, 120] {
        let at = match off < 0 {
            true => now - Duration::from_secs(120),
            false => now + Duration::from_secs(120),
        };
        assert_eq!(
            post(
                &gw,
                "/hooks/paid",
                &signed("/hooks/paid", body, SECRET, at),
                body
            )
            .status,
            401
        );
    }
    assert_eq!(refusals(admin, "clock_skew"), 2.0);

    // A body changed on the way: its digest no longer matches (the signature does).
    let changed = signed("/hooks/paid", body, SECRET, now - Duration::from_secs(1));
    let tampered = post(&gw, "/hooks/paid", &changed, r#"{"event":"paid","id":8}"#);
    assert_eq!(tampered.status, 401);
    assert_eq!(refusals(admin, "body_digest_mismatch"), 1.0);

    // Another path than the one signed.
    let moved = signed("/hooks/paid", body, SECRET, now - Duration::from_secs(2));
    assert_eq!(post(&gw, "/hooks/refund", &moved, body).status, 401);

    // The digest left out of the signature.
    let mut unsigned = signed("/hooks/paid", body, SECRET, now - Duration::from_secs(3));
    unsigned[2].1 = unsigned[2]
        .1
        .replace("date request-line digest", "date request-line");
    assert_eq!(post(&gw, "/hooks/paid", &unsigned, body).status, 401);
    assert_eq!(refusals(admin, "header_not_signed"), 1.0);

    // No signature at all.
    assert_eq!(post(&gw, "/hooks/paid", &[], body).status, 401);
    // And nothing refused reached the upstream.
    assert_eq!(hits(&e), 1);
}
