//! The whole `oidc` login in a real browser: headless Chromium (Debian's) driven by npm's
//! playwright-core (tests/js/oidc_login.mjs) through the provider's login and consent forms
//! and back, the session cookie, the claims upstream, a refresh, a changed cookie refused,
//! logout. A screenshot of the page after login is left in target/oidc-login.png.

mod common;
use common::idp::Idp;
use common::node::node_run;
use common::*;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[test]
fn a_person_logs_in_through_the_provider_in_a_real_browser() {
    let e = echo("e", &[]);
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let gw = gateway(&format!(
        "[upstreams.e]\ntargets = [\"{}\"]\n\n[policies.login]\nkind = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"pylon-web\"\nclient_secret = \"pylon-web-secret\"\ncookie_secret = \"{SECRET}\"\nforward_access_token = true\nclaims_to_headers = {{ email = \"x-email\" }}\n\n[[routes]]\nname = \"app\"\nupstream = \"e\"\npolicies = [\"login\"]\n",
        e.addr
    ));
    // Access tokens of 4 s: due for a refresh after 3.
    let idp = Idp::start(idp_port, None, Some(&gw.url("/oauth/callback")), 4);
    let shot = format!("{}/target/oidc-login.png", env!("CARGO_MANIFEST_DIR"));
    let out = node_run("oidc_login.mjs", &[&gw.url(""), &issuer, &shot]);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(seen.get("error").is_none(), "{seen:#}");
    let s = |k: &str| seen[k].as_str().unwrap_or_default().to_string();

    assert!(
        s("login_at").starts_with(&format!("{issuer}/interaction/")),
        "{seen:#}"
    );
    assert_eq!(s("back_at"), gw.url("/app/page?from=browser"));
    assert_eq!(s("consumer"), "erin");
    assert_eq!(s("email"), "erin@example.com");
    assert!(s("first_token").starts_with("Bearer "));
    assert!(!s("upstream_cookie").contains("pylon_session"));
    let cookies = seen["cookies"].as_array().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "pylon_session")
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);

    assert_eq!(s("later_consumer"), "erin");
    assert_ne!(s("later_token"), s("first_token"), "refreshed");
    assert_eq!(idp.refreshes(), 1);
    assert_eq!(seen["api_with_session"], 200);
    assert_eq!(seen["api_with_changed_cookie"], 401);
    assert_eq!(seen["api_with_restored_cookie"], 200);

    assert!(
        s("logout_at").starts_with(&format!("{issuer}/session/end")),
        "{seen:#}"
    );
    let left = seen["after_logout_cookies"].as_array().unwrap();
    assert!(!left.iter().any(|c| c == "pylon_session"), "{seen:#}");
    assert_eq!(seen["api_after_logout"], 401);
    assert!(
        s("page_after_logout_at").starts_with(&format!("{issuer}/")),
        "a page needs a login again: {seen:#}"
    );
}
