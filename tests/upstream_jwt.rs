//! `upstream_jwt`: the upstream verifies the gateway's statement of the caller against the
//! JWKS the gateway publishes; what a client forges never gets through.

mod common;
use common::*;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, DecodingKey, Validation};
use openssl::ec::{EcGroup, EcKey};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::Value;

/// A gateway whose route `/api` needs an API key, then signs the identity with `pem`.
fn signing_gateway(e: &Echo, pem: &str, algorithm: &str) -> (Gateway, u16) {
    let dir = scratch();
    let key = dir.join("identity.pem");
    std::fs::write(&key, pem).unwrap();
    let admin = free_port();
    let gw = gateway(&format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[upstreams.e]
targets = ["{}"]

[consumers.alice]
api_keys = ["alice-key"]
groups = ["gold", "beta"]

[policies.keys]
kind = "api_key"

[policies.identity]
kind = "upstream_jwt"
key = "file:{}"
algorithm = "{algorithm}"
header = "x-pylon-identity"
ttl = "60s"
issuer = "pylon-test"
jwks_path = "/.well-known/jwks.json"

[[routes]]
name = "api"
paths = ["/api", "/.well-known/"]
upstream = "e"
policies = ["keys", "identity"]

[[routes]]
name = "open"
paths = ["/open"]
upstream = "e"
policies = ["identity"]
"#,
        e.addr,
        key.display()
    ));
    wait_for_port(admin);
    (gw, admin)
}

/// What the upstream would do: verify the token against the gateway's JWKS.
fn verify(token: &str, jwks: &JwkSet, algorithm: jsonwebtoken::Algorithm) -> Value {
    let kid = decode_header(token).unwrap().kid.expect("a kid");
    let jwk = jwks.find(&kid).expect("the kid is in the JWKS");
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&["pylon-test"]);
    decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("the token verifies")
        .claims
}

fn check(pem: &str, algorithm: &str, alg: jsonwebtoken::Algorithm) {
    let e = echo("e", &[]);
    let (gw, admin) = signing_gateway(&e, pem, algorithm);
    let jwks: JwkSet =
        serde_json::from_str(&get(&format!("http://127.0.0.1:{admin}/jwks")).body).unwrap();
    assert_eq!(jwks.keys.len(), 1);
    // The same set, public, on the route that serves it (no API key needed).
    let public = get(&gw.url("/.well-known/jwks.json"));
    assert_eq!(public.status, 200);
    assert_eq!(
        public.header("content-type"),
        Some("application/jwk-set+json")
    );
    assert_eq!(
        serde_json::from_str::<JwkSet>(&public.body)
            .unwrap()
            .keys
            .len(),
        1
    );

    // A client forging both headers: the upstream gets the gateway's.
    let forged = [
        ("x-api-key", "alice-key"),
        (
            "x-pylon-identity",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.",
        ),
        ("x-consumer", "root"),
    ];
    let seen = get_with(&gw.url("/api/orders"), &forged).json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-consumer"], "alice");
    let token = headers["x-pylon-identity"].as_str().unwrap();
    let claims = verify(token, &jwks, alg);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["groups"], serde_json::json!(["gold", "beta"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    // The next request reuses the token (signed once per half its life).
    let again = get_with(&gw.url("/api/orders"), &forged[..1]).json();
    assert_eq!(again["headers"]["x-pylon-identity"], token);

    // No consumer, no token; the forged ones are gone all the same.
    let anonymous = get_with(&gw.url("/open"), &forged[1..]).json();
    assert!(anonymous["headers"].get("x-pylon-identity").is_none());
    assert!(anonymous["headers"].get("x-consumer").is_none());
}

#[test]
fn an_es256_identity_verifies_against_the_published_jwks() {
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    // A SEC1 "EC PRIVATE KEY", as `openssl ecparam -genkey` writes it.
    let pem = String::from_utf8(key.ec_key().unwrap().private_key_to_pem().unwrap()).unwrap();
    check(&pem, "ES256", jsonwebtoken::Algorithm::ES256);
}

#[test]
fn an_rs256_identity_verifies_against_the_published_jwks() {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    check(&pem, "RS256", jsonwebtoken::Algorithm::RS256);
}
