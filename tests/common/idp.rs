//! The OpenID provider of the identity tests (npm's oidc-provider, tests/js/oidc_provider.mjs)
//! and a browser's side of a login through it over plain HTTP: a cookie jar, redirects, the
//! provider's login and consent forms.

use super::node::node_server;
use super::{get, request, Proc};
use base64::Engine;
use std::collections::BTreeMap;

pub struct Idp {
    _proc: Proc,
    pub port: u16,
}

/// `Basic` credentials of a client.
fn basic(id: &str, secret: &str) -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {pair}")
}

impl Idp {
    /// The provider on `port`; `jwks` for the client `pylon-jwt`, `redirect` (the gateway's
    /// callback) for the web client `pylon-web`, whose access tokens last `web_ttl` seconds.
    pub fn start(port: u16, jwks: Option<&str>, redirect: Option<&str>, web_ttl: u64) -> Idp {
        let port_arg = port.to_string();
        let ttl = web_ttl.to_string();
        let args = [&port_arg, jwks.unwrap_or("-"), redirect.unwrap_or(""), &ttl];
        Idp {
            _proc: node_server("oidc_provider.mjs", &args),
            port,
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    /// A client credentials token of `svc` for `resource` with `scope`.
    pub fn token(&self, resource: &str, scope: &str) -> String {
        let resp = request(
            "POST",
            &self.url("/token"),
            &[
                ("authorization", &basic("svc", "svc-secret")),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(&format!(
                "grant_type=client_credentials&scope={scope}&resource={resource}"
            )),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.json()["access_token"].as_str().unwrap().to_string()
    }

    /// Revoke a token, as the client it was issued to.
    pub fn revoke(&self, token: &str, client: &str, secret: &str) {
        let resp = request(
            "POST",
            &self.url("/token/revocation"),
            &[
                ("authorization", &basic(client, secret)),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(&format!("token={token}")),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
    }

    /// End an access token early, its grant and refresh token kept.
    pub fn forget(&self, token: &str) {
        assert_eq!(
            get(&self.url(&format!("/_forget?token={token}"))).body,
            "forgotten"
        );
    }

    fn count(&self, what: &str) -> u64 {
        get(&self.url(what)).body.trim().parse().unwrap()
    }

    /// Introspection calls made so far.
    pub fn introspections(&self) -> u64 {
        self.count("/_introspections")
    }

    /// Refresh-token grants made so far.
    pub fn refreshes(&self) -> u64 {
        self.count("/_refreshes")
    }
}

/// A browser's cookies, per host, and requests that do not follow redirects.
#[derive(Default)]
pub struct Browser {
    pub jar: BTreeMap<(String, String), String>,
}

pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub cookies: Vec<String>,
    pub body: String,
}

impl Browser {
    pub fn host(url: &str) -> String {
        url.split('/').nth(2).unwrap_or_default().to_string()
    }

    /// The `Cookie` header the jar sends to `url`'s host.
    pub fn cookie(&self, url: &str) -> String {
        let host = Self::host(url);
        let pairs: Vec<String> = self
            .jar
            .iter()
            .filter(|((h, _), _)| *h == host)
            .map(|((_, n), v)| format!("{n}={v}"))
            .collect();
        pairs.join("; ")
    }

    /// Take the `Set-Cookie` values of an answer from `url`'s host.
    pub fn take(&mut self, url: &str, cookies: &[String]) {
        let host = Self::host(url);
        for set in cookies {
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let key = (host.clone(), name.trim().to_string());
            if value.is_empty() || attributes.to_ascii_lowercase().contains("max-age=0") {
                self.jar.remove(&key);
            } else {
                self.jar.insert(key, value.to_string());
            }
        }
    }

    pub fn send(&mut self, method: &str, url: &str, form: Option<&str>, accept: &str) -> Answer {
        let answer = send(method, url, &self.cookie(url), form, accept);
        self.take(url, &answer.cookies);
        answer
    }

    pub fn get(&mut self, url: &str) -> Answer {
        self.send("GET", url, None, "text/html")
    }

    /// An API call (not a navigation).
    pub fn api(&mut self, url: &str) -> Answer {
        self.send("GET", url, None, "application/json")
    }

    /// Follow redirects from `url` until an answer that is not one; the last answer and URL.
    pub fn follow(&mut self, url: &str) -> (Answer, String) {
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

    /// Log in as `user` from the page `url` (behind an `oidc` route): through the provider's
    /// login and consent forms and back. The page's answer.
    pub fn login(&mut self, url: &str, issuer: &str, user: &str) -> Answer {
        let first = self.get(url);
        assert_eq!(first.status, 302, "{}", first.body);
        let (form, _) = self.follow(&first.location.unwrap());
        assert_eq!(form.status, 200, "{}", form.body);
        let fields = format!("prompt=login&login={user}&password=any");
        let login = self.send(
            "POST",
            &action(issuer, &form.body),
            Some(&fields),
            "text/html",
        );
        let next = login
            .location
            .unwrap_or_else(|| panic!("login: {} {}", login.status, login.body));
        let (consent, _) = self.follow(&next);
        assert_eq!(consent.status, 200, "{}", consent.body);
        let confirmed = self.send(
            "POST",
            &action(issuer, &consent.body),
            Some("prompt=consent"),
            "text/html",
        );
        let (back, at) = self.follow(&confirmed.location.expect("the consent goes on"));
        assert_eq!(at, url, "back where the user was going");
        back
    }
}

/// One request with `cookie`, not following redirects.
pub fn send(method: &str, url: &str, cookie: &str, form: Option<&str>, accept: &str) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let host = Browser::host(url);
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("accept", accept);
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
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
    let cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .collect();
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
        cookies,
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

/// Where a page's form posts to.
pub fn action(issuer: &str, page: &str) -> String {
    let at = page.find("action=\"").expect("a form") + 8;
    let path = &page[at..at + page[at..].find('"').unwrap()];
    let path = html_escape::decode_html_entities(path);
    match path.starts_with("http") {
        true => path.into_owned(),
        false => format!("{issuer}{path}"),
    }
}
