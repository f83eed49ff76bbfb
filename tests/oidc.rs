//! `oidc` against a real OpenID provider (npm's oidc-provider, tests/js): the whole login over
//! HTTP as a browser makes it (redirects, the provider's login and consent forms, cookies),
//! the session, logout, and what a tampered cookie or an API call gets.

mod common;
use common::idp::{Browser, Idp};
use common::*;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[test]
fn a_browser_logs_in_at_the_provider_and_the_upstream_sees_who_it_is() {
    let e = echo("e", &[]);
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let gw = gateway(&format!(
        "[upstreams.e]\ntargets = [\"{}\"]\n\n[policies.login]\nkind = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"pylon-web\"\nclient_secret = \"pylon-web-secret\"\ncookie_secret = \"{SECRET}\"\nscopes = [\"openid\", \"email\", \"profile\"]\nforward_access_token = true\nclaims_to_headers = {{ email = \"x-email\" }}\n\n[[routes]]\nname = \"app\"\nupstream = \"e\"\npolicies = [\"login\"]\n",
        e.addr
    ));
    let _idp = Idp::start(idp_port, None, Some(&gw.url("/oauth/callback")), 300);
    let mut browser = Browser::default();

    // An API call without a session: 401, no redirect.
    assert_eq!(browser.api(&gw.url("/app/data")).status, 401);

    // A page: off to the provider with PKCE and a nonce; the login there, back to the page.
    let first = browser.get(&gw.url("/app/page?x=1"));
    assert_eq!(first.status, 302);
    let to_idp = first.location.unwrap();
    assert!(to_idp.starts_with(&format!("{issuer}/auth?")), "{to_idp}");
    assert!(to_idp.contains("code_challenge_method=S256") && to_idp.contains("nonce="));
    let back = browser.login(&gw.url("/app/page?x=1"), &issuer, "alice");
    assert_eq!(back.status, 200, "{}", back.body);

    // The session: the upstream sees the user, its claims and the access token, not the cookie.
    let page = browser.get(&gw.url("/app/other"));
    assert_eq!(page.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    let headers = &seen["headers"];
    assert_eq!(headers["x-consumer"], "alice");
    assert_eq!(headers["x-email"], "alice@example.com");
    assert!(headers["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
    assert!(!headers
        .get("cookie")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .contains("pylon_session"));

    // A changed cookie is no session.
    let gw_host = Browser::host(&gw.url("/"));
    let key = (gw_host.clone(), "pylon_session".to_string());
    let good = browser.jar[&key].clone();
    let mut bad = good.clone().into_bytes();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    browser
        .jar
        .insert(key.clone(), String::from_utf8(bad).unwrap());
    assert_eq!(browser.api(&gw.url("/app/x")).status, 401);
    browser.jar.insert(key.clone(), good);
    assert_eq!(browser.api(&gw.url("/app/x")).status, 200);

    // Logout: the cookie goes, and the provider is told.
    let out = browser.get(&gw.url("/logout"));
    assert_eq!(out.status, 302);
    assert!(out
        .location
        .unwrap()
        .starts_with(&format!("{issuer}/session/end")));
    assert!(!browser.jar.contains_key(&key));
    assert_eq!(browser.api(&gw.url("/app/x")).status, 401);
}
