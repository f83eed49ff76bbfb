//! `oidc` against a real OpenID provider (npm's oidc-provider, tests/js): the whole login over
//! HTTP as a browser makes it (redirects, the provider's login and consent forms, cookies),
//! the session, logout, and what a tampered cookie or an API call gets.

mod common;
use common::node::node_server;
use common::*;
use std::collections::BTreeMap;

/// A browser's cookies, per host, and requests that do not follow redirects.
#[derive(Default)]
struct Browser {
    jar: BTreeMap<(String, String), String>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn host(url: &str) -> String {
        url.split('/').nth(2).unwrap_or_default().to_string()
    }

    fn send(&mut self, method: &str, url: &str, form: Option<&str>, accept: &str) -> Answer {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let host = Self::host(url);
        let cookie: Vec<String> = self
            .jar
            .iter()
            .filter(|((h, _), _)| *h == host)
            .map(|((_, n), v)| format!("{n}={v}"))
            .collect();
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("accept", accept);
        if !cookie.is_empty() {
            req = req.header("cookie", cookie.join("; "));
        }
        let result = match form {
            Some(body) => agent.run(
                req.header("content-type", "application/x-www-form-urlencoded")
                    .body(body.to_string())
                    .unwrap(),
            ),
            None => agent.run(req.body(()).unwrap()),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        for set in resp.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let key = (host.clone(), name.trim().to_string());
            if value.is_empty() || attributes.to_ascii_lowercase().contains("max-age=0") {
                self.jar.remove(&key);
            } else {
                self.jar.insert(key, value.to_string());
            }
        }
        let location = resp.headers().get("location").map(|l| {
            let l = l.to_str().unwrap();
            match l.starts_with('/') {
                true => format!("http://{host}{l}"),
                false => l.to_string(),
            }
        });
        Answer {
            status: resp.status().as_u16(),
            location,
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&mut self, url: &str) -> Answer {
        self.send("GET", url, None, "text/html")
    }

    /// Follow redirects from `url` until an answer that is not one; the last answer and URL.
    fn follow(&mut self, url: &str) -> (Answer, String) {
        let mut url = url.to_string();
        for _ in 0..10 {
            let answer = self.get(&url);
            match (answer.status, &answer.location) {
                (301..=303 | 307 | 308, Some(next)) => url = next.clone(),
                _ => return (answer, url),
            }
        }
        panic!("too many redirects");
    }
}

/// Where a page's form posts to.
fn action(issuer: &str, page: &str) -> String {
    let at = page.find("action=\"").expect("a form") + 8;
    let path = &page[at..at + page[at..].find('"').unwrap()];
    let path = html_escape::decode_html_entities(path);
    match path.starts_with("http") {
        true => path.into_owned(),
        false => format!("{issuer}{path}"),
    }
}

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
    let callback = gw.url("/oauth/callback");
    let _idp = node_server(
        "oidc_provider.mjs",
        &[&idp_port.to_string(), "-", &callback],
    );
    let mut browser = Browser::default();

    // An API call without a session: 401, no redirect.
    let api = browser.send("GET", &gw.url("/app/data"), None, "application/json");
    assert_eq!(api.status, 401);

    // A page: off to the provider, its login form, its consent, back through the callback.
    let first = browser.get(&gw.url("/app/page?x=1"));
    assert_eq!(first.status, 302);
    let to_idp = first.location.unwrap();
    assert!(to_idp.starts_with(&format!("{issuer}/auth?")), "{to_idp}");
    assert!(to_idp.contains("code_challenge_method=S256") && to_idp.contains("nonce="));
    let (form, _) = browser.follow(&to_idp);
    assert_eq!(form.status, 200, "{}", form.body);
    let fields = "prompt=login&login=alice&password=any";
    let login = browser.send(
        "POST",
        &action(&issuer, &form.body),
        Some(fields),
        "text/html",
    );
    let next = login
        .location
        .unwrap_or_else(|| panic!("login: {} {}", login.status, login.body));
    let (consent, _) = browser.follow(&next);
    assert_eq!(consent.status, 200, "{}", consent.body);
    let fields = Some("prompt=consent");
    let confirmed = browser.send("POST", &action(&issuer, &consent.body), fields, "text/html");
    let (back, at) = browser.follow(&confirmed.location.expect("the consent goes on"));
    assert_eq!(back.status, 200, "ended at {at}: {}", back.body);
    assert_eq!(at, gw.url("/app/page?x=1"), "back where the user was going");

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
    assert_eq!(
        browser
            .send("GET", &gw.url("/app/x"), None, "application/json")
            .status,
        401
    );
    browser.jar.insert(key.clone(), good);
    assert_eq!(
        browser
            .send("GET", &gw.url("/app/x"), None, "application/json")
            .status,
        200
    );

    // Logout: the cookie goes, and the provider is told.
    let out = browser.get(&gw.url("/logout"));
    assert_eq!(out.status, 302);
    assert!(out
        .location
        .unwrap()
        .starts_with(&format!("{issuer}/session/end")));
    assert!(!browser.jar.contains_key(&key));
    assert_eq!(
        browser
            .send("GET", &gw.url("/app/x"), None, "application/json")
            .status,
        401
    );
}
