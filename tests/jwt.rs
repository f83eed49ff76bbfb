//! JWT through the real gateway: tokens minted here for every algorithm, keys inline, from PEM
//! files and from a JWKS server run by the test.

mod common;
use common::*;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "an-hs-secret-of-some-length-0123456789";

/// A signing key and what the gateway needs to verify it.
struct Key {
    private: PKey<Private>,
    alg: Algorithm,
}

impl Key {
    fn rsa(alg: Algorithm) -> Key {
        Key {
            private: PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            alg,
        }
    }

    fn ec(nid: Nid, alg: Algorithm) -> Key {
        let group = EcGroup::from_curve_name(nid).unwrap();
        Key {
            private: PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap(),
            alg,
        }
    }

    fn ed() -> Key {
        Key {
            private: PKey::generate_ed25519().unwrap(),
            alg: Algorithm::EdDSA,
        }
    }

    fn public_pem(&self) -> String {
        String::from_utf8(self.private.public_key_to_pem().unwrap()).unwrap()
    }

    fn encoding(&self) -> EncodingKey {
        let pem = self.private.private_key_to_pem_pkcs8().unwrap();
        match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        }
    }

    fn sign(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        encode(&header, claims, &self.encoding()).unwrap()
    }

    /// This key as a JWK.
    fn jwk(&self, kid: &str) -> Value {
        if let Ok(rsa) = self.private.rsa() {
            return json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": B64.encode(rsa.n().to_vec()), "e": B64.encode(rsa.e().to_vec())});
        }
        let ec = self.private.ec_key().unwrap();
        let (mut x, mut y) = (
            openssl::bn::BigNum::new().unwrap(),
            openssl::bn::BigNum::new().unwrap(),
        );
        let mut ctx = BigNumContext::new().unwrap();
        ec.public_key()
            .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
            .unwrap();
        json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
            "x": B64.encode(x.to_vec_padded(32).unwrap()),
            "y": B64.encode(y.to_vec_padded(32).unwrap())})
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"sub": "alice@example.com", "iss": "https://idp.test/", "aud": "orders-api",
        "exp": now() + 600, "tenant": "acme", "scope": "orders:read profile"})
}

fn hs(alg: Algorithm, claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A JWKS endpoint whose document the test changes, and can take down.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(doc: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let doc = Arc::new(Mutex::new(doc.to_string()));
        let up = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, u, h) = (doc.clone(), up.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                if !u.load(Ordering::SeqCst) {
                    let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    continue;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer { url, doc, up, hits }
    }

    fn serve(&self, keys: Vec<Value>) {
        *self.doc.lock().unwrap() = json!({ "keys": keys }).to_string();
    }
}

struct Keys {
    rsa: Key,
    ec256: Key,
    ec384: Key,
    ed: Key,
}

fn keys() -> Keys {
    Keys {
        rsa: Key::rsa(Algorithm::RS256),
        ec256: Key::ec(Nid::X9_62_PRIME256V1, Algorithm::ES256),
        ec384: Key::ec(Nid::SECP384R1, Algorithm::ES384),
        ed: Key::ed(),
    }
}

fn config(e: &Echo, k: &Keys, jwks_url: &str) -> String {
    let dir = scratch();
    let write = |name: &str, key: &Key| {
        let path = dir.join(name);
        std::fs::write(&path, key.public_pem()).unwrap();
        format!("file:{}", path.display())
    };
    format!(
        r#"[upstreams.echo]
targets = ["{addr}"]

[consumers.alice]
jwt_subject = "alice@example.com"
groups = ["gold"]

[policies.hs]
kind = "jwt"
algorithms = ["HS256", "HS384", "HS512"]
secret = "{SECRET}"
issuer = "https://idp.test/"
audience = ["orders-api"]
required_claims = ["sub", "tenant"]
consumer_claim = "sub"
claims_to_headers = {{ sub = "x-user-id", tenant = "x-tenant" }}

[policies.pem]
kind = "jwt"
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
keys = ["{rsa}", "{ec256}", "{ec384}", "{ed}"]
leeway = "30s"

[policies.mixed]
kind = "jwt"
algorithms = ["HS256", "RS256"]
secret = "{SECRET}"
keys = ["{rsa}"]

[policies.jwks]
kind = "jwt"
algorithms = ["RS256", "ES256"]
jwks_url = "{jwks_url}"
jwks_refresh = "1s"
jwks_min_refresh = "100ms"

[policies.orders-read]
kind = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
required_scopes = ["orders:read"]

[policies.orders-write]
kind = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
required_scopes = ["orders:write"]

[[routes]]
name = "hs"
paths = ["/hs"]
upstream = "echo"
policies = ["hs"]

[[routes]]
name = "pem"
paths = ["/pem"]
upstream = "echo"
policies = ["pem"]

[[routes]]
name = "mixed"
paths = ["/mixed"]
upstream = "echo"
policies = ["mixed"]

[[routes]]
name = "jwks"
paths = ["/jwks"]
upstream = "echo"
policies = ["jwks"]

[[routes]]
name = "read"
paths = ["/read"]
upstream = "echo"
policies = ["orders-read"]

[[routes]]
name = "write"
paths = ["/write"]
upstream = "echo"
policies = ["orders-write"]
"#,
        addr = e.addr,
        rsa = write("rsa.pem", &k.rsa),
        ec256 = write("ec256.pem", &k.ec256),
        ec384 = write("ec384.pem", &k.ec384),
        ed = write("ed.pem", &k.ed),
    )
}

fn status(gw: &Gateway, path: &str, token: &str) -> Resp {
    get_with(&gw.url(path), &[("authorization", &bearer(token))])
}

#[test]
fn every_algorithm_verifies() {
    let e = echo("e", &[]);
    let k = keys();
    let jwks = JwksServer::start(json!({"keys": [k.rsa.jwk("r1")]}));
    let gw = gateway(&config(&e, &k, &jwks.url));

    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let r = status(&gw, "/hs", &hs(alg, &claims(), SECRET));
        assert_eq!(r.status, 200, "{alg:?}: {}", r.body);
        let h = &r.json()["headers"];
        assert_eq!(h["x-consumer"], "alice");
        assert_eq!(h["x-user-id"], "alice@example.com");
        assert_eq!(h["x-tenant"], "acme");
        assert!(h.get("authorization").is_none(), "token forwarded: {h}");
    }
    let cases = [
        (&k.rsa, Algorithm::RS256),
        (&k.rsa, Algorithm::RS384),
        (&k.rsa, Algorithm::RS512),
        (&k.rsa, Algorithm::PS256),
        (&k.rsa, Algorithm::PS384),
        (&k.rsa, Algorithm::PS512),
        (&k.ec256, Algorithm::ES256),
        (&k.ec384, Algorithm::ES384),
        (&k.ed, Algorithm::EdDSA),
    ];
    for (key, alg) in cases {
        let r = status(&gw, "/pem", &key.sign(alg, None, &claims()));
        assert_eq!(r.status, 200, "{alg:?}: {}", r.body);
        // No consumer_claim: authenticated, but no consumer is named.
        assert!(r.json()["headers"].get("x-consumer").is_none());
    }
    let r = status(
        &gw,
        "/jwks",
        &k.rsa.sign(Algorithm::RS256, Some("r1"), &claims()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn bad_tokens_are_refused() {
    let e = echo("e", &[]);
    let k = keys();
    let jwks = JwksServer::start(json!({"keys": [k.rsa.jwk("r1")]}));
    let admin = free_port();
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
        config(&e, &k, &jwks.url)
    ));
    wait_for_port(admin);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        hs(Algorithm::HS256, &c, SECRET)
    };
    let other = Key::rsa(Algorithm::RS256);
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims().to_string())
    );
    let cases: Vec<(&str, &str, String)> = vec![
        ("expired", "/hs", with(&|c| c["exp"] = json!(now() - 120))),
        (
            "not yet valid",
            "/hs",
            with(&|c| c["nbf"] = json!(now() + 120)),
        ),
        (
            "wrong issuer",
            "/hs",
            with(&|c| c["iss"] = json!("https://evil.test/")),
        ),
        (
            "wrong audience",
            "/hs",
            with(&|c| c["aud"] = json!("billing-api")),
        ),
        (
            "missing claim",
            "/hs",
            with(&|c| {
                c.as_object_mut().unwrap().remove("tenant");
            }),
        ),
        (
            "unknown consumer",
            "/hs",
            with(&|c| c["sub"] = json!("mallory@example.com")),
        ),
        (
            "bad signature",
            "/hs",
            hs(Algorithm::HS256, &claims(), "not-the-secret"),
        ),
        ("alg none", "/hs", none.clone()),
        ("alg none", "/pem", none),
        (
            "other key",
            "/pem",
            other.sign(Algorithm::RS256, None, &claims()),
        ),
        (
            "algorithm not accepted",
            "/pem",
            hs(Algorithm::HS256, &claims(), SECRET),
        ),
        // HS256 "signed" with the RSA public key: the classic confusion attack.
        (
            "confusion",
            "/pem",
            hs(Algorithm::HS256, &claims(), &k.rsa.public_pem()),
        ),
        (
            "confusion",
            "/mixed",
            hs(Algorithm::HS256, &claims(), &k.rsa.public_pem()),
        ),
        (
            "unknown kid",
            "/jwks",
            k.rsa.sign(Algorithm::RS256, Some("nope"), &claims()),
        ),
        (
            "oversized",
            "/hs",
            format!("{}.{}.x", "a".repeat(5000), "b".repeat(5000)),
        ),
        ("garbage", "/hs", "not-a-jwt".to_string()),
    ];
    for (what, path, token) in &cases {
        let r = status(&gw, path, token);
        assert_error(&r, 401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"pylon\", error=\"invalid_token\""),
            "{what}"
        );
    }
    // Expiry is checked with the policy's leeway: 10 s late is within 30 s.
    let late = k
        .rsa
        .sign(Algorithm::RS256, None, &json!({"exp": now() - 10}));
    assert_eq!(status(&gw, "/pem", &late).status, 200);
    // No token at all.
    let r = get(&gw.url("/hs"));
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"pylon\""));
    // A client cannot set the headers claims map to.
    let r = get_with(
        &gw.url("/hs"),
        &[
            (
                "authorization",
                &bearer(&hs(Algorithm::HS256, &claims(), SECRET)),
            ),
            ("x-tenant", "other"),
        ],
    );
    assert_eq!(r.json()["headers"]["x-tenant"], "acme");

    // Each refusal is counted by reason; tokens and subjects never become labels.
    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    for reason in [
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "unknown_consumer",
        "bad_signature",
        "invalid_token",
        "algorithm_not_allowed",
        "unknown_kid",
        "token_too_large",
        "missing_credentials",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("pylon_auth_failures_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "no {reason} in:\n{metrics}"
        );
    }
    assert!(!metrics.contains("mallory"));
}

#[test]
fn scopes_gate_routes() {
    let e = echo("e", &[]);
    let k = keys();
    let gw = gateway(&config(&e, &k, "http://127.0.0.1:9/jwks.json"));
    let token = hs(Algorithm::HS256, &claims(), SECRET);
    assert_eq!(status(&gw, "/read", &token).status, 200);
    let r = status(&gw, "/write", &token);
    assert_error(&r, 403, "forbidden");
    let mut c = claims();
    c["scope"] = Value::Null;
    c["scp"] = json!(["orders:write"]);
    assert_eq!(
        status(&gw, "/write", &hs(Algorithm::HS256, &c, SECRET)).status,
        200
    );
}

#[test]
fn jwks_rotation_and_outage() {
    let e = echo("e", &[]);
    let k = keys();
    let next = Key::rsa(Algorithm::RS256);
    let jwks = JwksServer::start(json!({"keys": [k.rsa.jwk("old")]}));
    let gw = gateway(&config(&e, &k, &jwks.url));
    let old = k.rsa.sign(Algorithm::RS256, Some("old"), &claims());
    let new = next.sign(Algorithm::RS256, Some("new"), &claims());
    let ec = k.ec256.sign(Algorithm::ES256, Some("ec"), &claims());
    assert_eq!(status(&gw, "/jwks", &old).status, 200);
    assert_error(&status(&gw, "/jwks", &new), 401, "unauthorized");

    // The provider publishes a new key: a token with its kid triggers a refetch at once.
    jwks.serve(vec![k.rsa.jwk("old"), next.jwk("new"), k.ec256.jwk("ec")]);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(status(&gw, "/jwks", &new).status, 200);
    assert_eq!(status(&gw, "/jwks", &ec).status, 200);

    // The old key is withdrawn: its tokens fail once the set is refreshed, cached or not.
    jwks.serve(vec![next.jwk("new")]);
    wait_until(Duration::from_secs(5), "JWKS change applied", || {
        status(&gw, "/jwks", &old).status == 401
    });
    assert_eq!(status(&gw, "/jwks", &new).status, 200);

    // The provider goes down: the last good set keeps serving through several refresh periods.
    jwks.up.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status(&gw, "/jwks", &new).status, 200);
    // Made-up kids are refetched at most once per jwks_min_refresh, not once per request.
    jwks.up.store(true, Ordering::SeqCst);
    let before = jwks.hits.load(Ordering::SeqCst);
    for i in 0..30 {
        let forged = next.sign(Algorithm::RS256, Some(&format!("forged-{i}")), &claims());
        assert_error(&status(&gw, "/jwks", &forged), 401, "unauthorized");
    }
    let fetched = jwks.hits.load(Ordering::SeqCst) - before;
    assert!(fetched <= 15, "30 unknown kids caused {fetched} fetches");

    // An empty set withdraws every key.
    jwks.serve(vec![]);
    wait_until(Duration::from_secs(5), "JWKS change applied", || {
        status(&gw, "/jwks", &new).status == 401
    });
}
