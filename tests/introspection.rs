//! `oauth2_introspection` against a real OpenID provider (npm's oidc-provider, tests/js): client
//! credentials tokens active, revoked, expired, for another audience, without the scope; one
//! introspection for 100 concurrent requests with a new token; each client authentication.

mod common;
use base64::Engine;
use common::idp::Idp;
use common::*;
use openssl::ec::{EcGroup, EcKey};
use openssl::pkey::PKey;
use std::sync::{Arc, Barrier};
use std::time::Duration;

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A P-256 key as PEM and as the public JWKS the provider knows the client `pylon-jwt` by.
fn client_key() -> (String, String) {
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let (mut x, mut y) = (
        openssl::bn::BigNum::new().unwrap(),
        openssl::bn::BigNum::new().unwrap(),
    );
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let (x, y) = (
        b64url(&x.to_vec_padded(32).unwrap()),
        b64url(&y.to_vec_padded(32).unwrap()),
    );
    // The gateway names its key by its RFC 7638 thumbprint.
    let members = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = b64url(&openssl::sha::sha256(members.as_bytes()));
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": x, "y": y,
    }]});
    let pem = String::from_utf8(
        PKey::from_ec_key(ec)
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap(),
    )
    .unwrap();
    (pem, jwks.to_string())
}

fn start() -> (Idp, Gateway, u16, Echo) {
    let (pem, jwks) = client_key();
    let port = free_port();
    let idp = Idp::start(port, Some(&jwks), None, 300);
    let key = scratch().join("client.pem");
    std::fs::write(&key, pem).unwrap();
    let e = echo("e", &[]);
    let admin = free_port();
    let endpoint = idp.url("/token/introspection");
    let policy = |name: &str, auth: &str| {
        format!(
            "[policies.{name}]\nkind = \"oauth2_introspection\"\nendpoint = \"{endpoint}\"\n{auth}\naudience = [\"urn:orders\", \"urn:short\"]\nrequired_scopes = [\"orders:read\"]\ncache_ttl = \"60s\"\nclaims_to_headers = {{ client_id = \"x-client\", scope = \"x-scope\" }}\n\n[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nupstream = \"e\"\npolicies = [\"{name}\"]\n\n"
        )
    };
    let gw = gateway(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[upstreams.e]\ntargets = [\"{}\"]\n\n{}{}{}",
        e.addr,
        policy("basic", "client_id = \"pylon\"\nclient_secret = \"pylon-secret\""),
        policy(
            "post",
            "client_id = \"pylon-post\"\nclient_secret = \"pylon-post-secret\"\nclient_auth = \"client_secret_post\""
        ),
        policy(
            "jwt",
            &format!(
                "client_id = \"pylon-jwt\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"file:{}\"\nprivate_key_algorithm = \"ES256\"",
                key.display()
            )
        ),
    ));
    wait_for_port(admin);
    (idp, gw, admin, e)
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Resp {
    get_with(
        &gw.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
}

fn refusals(admin: u16, reason: &str) -> f64 {
    metric(
        admin,
        &format!(
            "pylon_auth_failures_total{{policy=\"basic\",reason=\"{reason}\",route=\"basic\"}}"
        ),
    )
}

#[test]
fn tokens_are_checked_at_the_issuer_and_each_answer_is_remembered() {
    let (idp, gw, admin, e) = start();

    // Active: the consumer is the client, the claims go upstream, the token does not.
    let token = idp.token("urn:orders", "orders:read");
    let ok = bearer(&gw, "/basic", &token);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let up = &ok.json()["headers"];
    assert_eq!(up["x-consumer"], "svc");
    assert_eq!(up["x-client"], "svc");
    assert_eq!(up["x-scope"], "orders:read");
    assert!(up.get("authorization").is_none());
    // Remembered: no second call.
    let before = idp.introspections();
    for _ in 0..5 {
        assert_eq!(bearer(&gw, "/basic", &token).status, 200);
    }
    assert_eq!(idp.introspections(), before);

    // 100 concurrent requests with a new token: one introspection.
    let fresh = idp.token("urn:orders", "orders:read");
    let before = idp.introspections();
    let barrier = Arc::new(Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (barrier, url, token) = (barrier.clone(), gw.url("/basic"), fresh.clone());
            std::thread::spawn(move || {
                barrier.wait();
                get_with(&url, &[("authorization", &format!("Bearer {token}"))]).status
            })
        })
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap() == 200));
    assert_eq!(
        idp.introspections() - before,
        1,
        "one call for 100 concurrent requests"
    );

    // Revoked before its first use.
    let revoked = idp.token("urn:orders", "orders:read");
    idp.revoke(&revoked, "svc", "svc-secret");
    let refused = bearer(&gw, "/basic", &revoked);
    assert_eq!(refused.status, 401);
    assert!(refused
        .header("www-authenticate")
        .is_some_and(|c| c.contains("invalid_token")));
    assert_eq!(refusals(admin, "inactive"), 1.0);

    // For another audience; without the scope.
    assert_eq!(
        bearer(&gw, "/basic", &idp.token("urn:other", "orders:read")).status,
        401
    );
    assert_eq!(refusals(admin, "wrong_audience"), 1.0);
    assert_eq!(
        bearer(&gw, "/basic", &idp.token("urn:orders", "orders:write")).status,
        403
    );
    assert_eq!(refusals(admin, "insufficient_scope"), 1.0);

    // A token living 2 s: remembered no longer than that.
    let short = idp.token("urn:short", "orders:read");
    assert_eq!(bearer(&gw, "/basic", &short).status, 200);
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(bearer(&gw, "/basic", &short).status, 401);

    // The other client authentications.
    assert_eq!(bearer(&gw, "/post", &token).status, 200);
    assert_eq!(bearer(&gw, "/jwt", &token).status, 200);
    // No token at all: the challenge without an error.
    let none = get(&gw.url("/basic"));
    assert_eq!(
        (none.status, none.header("www-authenticate")),
        (401, Some("Bearer realm=\"pylon\""))
    );
    assert_eq!(hits(&e), 1 + 5 + 100 + 1 + 2);

    // The issuer away: 503, not remembered.
    drop(idp);
    let away = bearer(&gw, "/basic", "never-seen-before");
    assert_eq!(away.status, 503);
    assert_eq!(away.json()["error"]["code"], "upstream_unavailable");
}
