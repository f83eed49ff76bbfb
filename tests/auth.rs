//! API keys, consumers and ACLs through the real gateway.

mod common;
use common::*;

/// sha256("bob-key-456")
fn sha(key: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

fn config(e: &Echo) -> String {
    format!(
        r#"[upstreams.echo]
targets = ["{addr}"]

[consumers.alice]
api_keys = ["alice-key-123"]
groups = ["gold"]

[consumers.bob]
api_keys = ["{bob}"]
groups = ["silver"]

[policies.keys]
kind = "api_key"
header = "x-api-key"
query = "api_key"

[policies.keys-forwarded]
kind = "api_key"
forward_credentials = true

[policies.gold-only]
kind = "acl"
allow = ["gold"]

[policies.no-silver]
kind = "acl"
deny = ["silver"]

[[routes]]
name = "open"
paths = ["/open"]
upstream = "echo"

[[routes]]
name = "keyed"
paths = ["/keyed"]
upstream = "echo"
policies = ["keys"]

[[routes]]
name = "gold"
paths = ["/gold"]
upstream = "echo"
policies = ["keys", "gold-only"]

[[routes]]
name = "not-silver"
paths = ["/not-silver"]
upstream = "echo"
policies = ["keys", "no-silver"]

[[routes]]
name = "forwarded"
paths = ["/forwarded"]
upstream = "echo"
policies = ["keys-forwarded"]
"#,
        addr = e.addr,
        bob = sha("bob-key-456")
    )
}

#[test]
fn api_keys_identify_consumers_and_are_stripped() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));

    let r = get_with(&gw.url("/keyed/x"), &[("x-api-key", "alice-key-123")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = &r.json()["headers"];
    assert_eq!(h["x-consumer"], "alice");
    assert!(h.get("x-api-key").is_none(), "the key was forwarded: {h}");

    // A key stored as sha256:<hex>.
    let r = get_with(&gw.url("/keyed"), &[("x-api-key", "bob-key-456")]);
    assert_eq!(r.json()["headers"]["x-consumer"], "bob");

    // In the query string: stripped from it, other parameters kept.
    let v = get(&gw.url("/keyed/q?a=1&api_key=alice-key-123&b=2")).json();
    assert_eq!(v["headers"]["x-consumer"], "alice");
    assert_eq!(v["query"], "a=1&b=2");

    // A client cannot claim to be a consumer.
    let r = get_with(
        &gw.url("/keyed"),
        &[("x-api-key", "bob-key-456"), ("x-consumer", "alice")],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "bob");
    let r = get_with(&gw.url("/open"), &[("x-consumer", "alice")]);
    assert!(r.json()["headers"].get("x-consumer").is_none());

    // Naming gateway-set headers in `Connection` does not remove them upstream.
    let r = get_with(
        &gw.url("/keyed"),
        &[
            ("x-api-key", "alice-key-123"),
            (
                "connection",
                "keep-alive, x-consumer, x-request-id, traceparent",
            ),
        ],
    );
    let h = &r.json()["headers"];
    assert_eq!(h["x-consumer"], "alice");
    assert!(h.get("x-request-id").is_some() && h.get("traceparent").is_some());
    // Nominating `Host` or `X-Forwarded-*` is refused outright (by Pingora).
    let r = get_with(
        &gw.url("/keyed"),
        &[
            ("x-api-key", "alice-key-123"),
            ("connection", "x-forwarded-for"),
        ],
    );
    assert_error(&r, 400, "bad_request");

    // forward_credentials keeps the key.
    let r = get_with(&gw.url("/forwarded"), &[("x-api-key", "alice-key-123")]);
    assert_eq!(r.json()["headers"]["x-api-key"], "alice-key-123");
}

#[test]
fn missing_or_wrong_keys_are_401() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let r = get(&gw.url("/keyed"));
    assert_error(&r, 401, "unauthorized");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("ApiKey") && challenge.contains("x-api-key"),
        "{challenge}"
    );
    let r = get_with(&gw.url("/keyed"), &[("x-api-key", "not-a-key")]);
    assert_error(&r, 401, "unauthorized");
    assert!(!r.body.contains("not-a-key"));
    // The hash of a stored key is not itself a key.
    let r = get_with(&gw.url("/keyed"), &[("x-api-key", &sha("bob-key-456"))]);
    assert_error(&r, 401, "unauthorized");
    assert_eq!(get(&gw.url("/open")).status, 200);
}

#[test]
fn acl_allows_and_denies_groups() {
    let e = echo("e", &[]);
    let gw = gateway(&config(&e));
    let alice = [("x-api-key", "alice-key-123")];
    let bob = [("x-api-key", "bob-key-456")];
    assert_eq!(get_with(&gw.url("/gold"), &alice).status, 200);
    let r = get_with(&gw.url("/gold"), &bob);
    assert_error(&r, 403, "forbidden");
    assert!(r.header("www-authenticate").is_none());
    assert_eq!(get_with(&gw.url("/not-silver"), &alice).status, 200);
    assert_error(&get_with(&gw.url("/not-silver"), &bob), 403, "forbidden");
    // No credentials at all: 401 before the ACL.
    assert_error(&get(&gw.url("/gold")), 401, "unauthorized");
}

#[test]
fn global_policies_cover_every_route() {
    let e = echo("e", &[]);
    let gw = gateway_with_server(
        "global_policies = [\"keys\"]",
        &format!(
            "[upstreams.echo]\ntargets = [\"{}\"]\n[consumers.c]\napi_keys = [\"k-1\"]\n[policies.keys]\nkind = \"api_key\"\n[[routes]]\nname = \"r\"\nupstream = \"echo\"\n",
            e.addr
        ),
    );
    assert_error(&get(&gw.url("/anything")), 401, "unauthorized");
    assert_eq!(
        get_with(&gw.url("/anything"), &[("x-api-key", "k-1")]).status,
        200
    );
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Consumers with bcrypt passwords, an htpasswd file, an API key, and an anonymous fallback.
fn basic_config(e: &Echo, htpasswd: &std::path::Path) -> String {
    format!(
        r#"[upstreams.echo]
targets = ["{addr}"]

[consumers.alice]
basic_auth = {{ user = "alice", password_hash = "{alice}" }}
groups = ["gold"]

[consumers.carol]
api_keys = ["carol-key"]
groups = ["gold"]

[consumers.guest]
groups = ["public"]

[policies.login]
kind = "basic_auth"
realm = "staff"

[policies.file-login]
kind = "basic_auth"
htpasswd = "{htpasswd}"

[policies.login-or-guest]
kind = "basic_auth"
anonymous = "guest"

[policies.keys]
kind = "api_key"

[policies.gold-only]
kind = "acl"
allow = ["gold"]

[[routes]]
name = "basic"
paths = ["/basic"]
upstream = "echo"
policies = ["login"]

[[routes]]
name = "file"
paths = ["/file"]
upstream = "echo"
policies = ["file-login"]

[[routes]]
name = "either"
paths = ["/either"]
upstream = "echo"
policies = ["keys", "login", "gold-only"]

[[routes]]
name = "acl-listed-first"
paths = ["/acl-first"]
upstream = "echo"
policies = ["gold-only", "login"]

[[routes]]
name = "guest"
paths = ["/guest"]
upstream = "echo"
policies = ["login-or-guest"]

[[routes]]
name = "guest-gold"
paths = ["/guest-gold"]
upstream = "echo"
policies = ["login-or-guest", "gold-only"]
"#,
        addr = e.addr,
        alice = bcrypt::hash("wonderland", 10).unwrap(),
        htpasswd = htpasswd.display(),
    )
}

fn htpasswd_file(lines: &str) -> std::path::PathBuf {
    let path = scratch().join("htpasswd");
    std::fs::write(&path, lines).unwrap();
    path
}

#[test]
fn basic_auth_checks_bcrypt_passwords() {
    let e = echo("e", &[]);
    let file = htpasswd_file(&format!(
        "# staff\nbob:{}\nalice:{}\n",
        bcrypt::hash("builder", 4).unwrap(),
        bcrypt::hash("from-file", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1),
    ));
    let gw = gateway(&basic_config(&e, &file));

    let r = get_with(
        &gw.url("/basic"),
        &[("authorization", &basic("alice", "wonderland"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let h = &r.json()["headers"];
    assert_eq!(h["x-consumer"], "alice");
    assert!(
        h.get("authorization").is_none(),
        "credentials forwarded: {h}"
    );

    for auth in [
        basic("alice", "looking-glass"),
        basic("mallory", "wonderland"),
        "Basic !!!".to_string(),
        "Basic bm8tY29sb24=".to_string(),
    ] {
        let r = get_with(&gw.url("/basic"), &[("authorization", &auth)]);
        assert_error(&r, 401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"staff\", charset=\"UTF-8\"")
        );
    }
    assert_error(&get(&gw.url("/basic")), 401, "unauthorized");

    // From the htpasswd file ($2y$ as Apache writes it); alice's file entry is her consumer.
    let r = get_with(
        &gw.url("/file"),
        &[("authorization", &basic("bob", "builder"))],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "bob");
    let r = get_with(
        &gw.url("/file"),
        &[("authorization", &basic("alice", "from-file"))],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "alice");
    let r = get_with(
        &gw.url("/file"),
        &[("authorization", &basic("alice", "wonderland"))],
    );
    assert_error(&r, 401, "unauthorized");
}

#[test]
fn first_credential_decides_and_anonymous_falls_back() {
    let e = echo("e", &[]);
    let gw = gateway(&basic_config(&e, &htpasswd_file("")));
    // Either an API key or a password, then the ACL.
    let r = get_with(&gw.url("/either"), &[("x-api-key", "carol-key")]);
    assert_eq!(r.json()["headers"]["x-consumer"], "carol");
    let r = get_with(
        &gw.url("/either"),
        &[("authorization", &basic("alice", "wonderland"))],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "alice");
    // A bad API key is refused even though a good password is there too: the key decided.
    let r = get_with(
        &gw.url("/either"),
        &[
            ("x-api-key", "nope"),
            ("authorization", &basic("alice", "wonderland")),
        ],
    );
    assert_error(&r, 401, "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("ApiKey"));
    assert_error(&get(&gw.url("/either")), 401, "unauthorized");

    // An ACL listed before the auth policy still sees the consumer it identifies.
    let r = get_with(
        &gw.url("/acl-first"),
        &[("authorization", &basic("alice", "wonderland"))],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "alice");
    assert_error(&get(&gw.url("/acl-first")), 401, "unauthorized");

    // No credential: the anonymous consumer, who is not gold.
    let r = get(&gw.url("/guest"));
    assert_eq!(r.json()["headers"]["x-consumer"], "guest");
    assert_error(&get(&gw.url("/guest-gold")), 403, "forbidden");
    // A bad credential is still refused, not downgraded to anonymous.
    let r = get_with(
        &gw.url("/guest"),
        &[("authorization", &basic("alice", "nope"))],
    );
    assert_error(&r, 401, "unauthorized");
    let r = get_with(
        &gw.url("/guest-gold"),
        &[("authorization", &basic("alice", "wonderland"))],
    );
    assert_eq!(r.json()["headers"]["x-consumer"], "alice");
}

#[test]
fn verified_passwords_skip_bcrypt() {
    let e = echo("e", &[]);
    let gw = gateway(&basic_config(&e, &htpasswd_file("")));
    let auth = [("authorization", basic("alice", "wonderland"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = std::time::Instant::now();
    assert_eq!(get_with(&gw.url("/basic"), &auth).status, 200);
    let first = started.elapsed();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(get_with(&gw.url("/basic"), &auth).status, 200);
    }
    let repeats = started.elapsed();
    // Cost 10 takes tens of milliseconds; twenty remembered checks take less than a few.
    assert!(
        repeats < first * 4,
        "20 repeats took {repeats:?}, the first {first:?}"
    );

    // A flood of wrong passwords queues behind the hashing slots; the remembered client does
    // not wait for it.
    let flood: Vec<_> = (0..16)
        .map(|i| {
            let url = gw.url("/basic");
            std::thread::spawn(move || {
                get_with(
                    &url,
                    &[("authorization", &basic("alice", &format!("guess-{i}")))],
                )
                .status
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    assert_eq!(get_with(&gw.url("/basic"), &auth).status, 200);
    let during = started.elapsed();
    for t in flood {
        assert!(matches!(t.join().unwrap(), 401 | 429));
    }
    assert!(
        during < first,
        "a remembered client waited {during:?} during a flood"
    );
}

/// A gateway with one basic-auth user whose hash has bcrypt cost `cost`.
fn costly_login(e: &Echo, cost: u32) -> Gateway {
    gateway(&format!(
        "[upstreams.echo]\ntargets = [\"{}\"]\n[consumers.bob]\nbasic_auth = {{ user = \"bob\", password_hash = \"{}\" }}\n[policies.login]\nkind = \"basic_auth\"\n[[routes]]\nname = \"r\"\nupstream = \"echo\"\npolicies = [\"login\"]\n",
        e.addr,
        bcrypt::hash("builder", cost).unwrap()
    ))
}

#[test]
fn unknown_users_take_as_long_as_known_ones() {
    let e = echo("e", &[]);
    let gw = costly_login(&e, 12);
    let took = |user: &str, i: usize| {
        let started = std::time::Instant::now();
        let r = get_with(
            &gw.url("/"),
            &[("authorization", &basic(user, &format!("guess-{i}")))],
        );
        assert_error(&r, 401, "unauthorized");
        started.elapsed()
    };
    let mut known: Vec<_> = (0..3).map(|i| took("bob", i)).collect();
    let mut unknown: Vec<_> = (0..3).map(|i| took("mallory", i)).collect();
    known.sort();
    unknown.sort();
    // Without the dummy hash an unknown user is answered in about a millisecond.
    assert!(
        unknown[1] * 2 >= known[1],
        "unknown {unknown:?} against known {known:?}"
    );
}

#[test]
fn a_flood_of_new_passwords_is_turned_away_with_429() {
    let e = echo("e", &[]);
    let gw = costly_login(&e, 13);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..40)
            .map(|i| {
                let gw = &gw;
                s.spawn(move || {
                    let r = get_with(
                        &gw.url("/"),
                        &[("authorization", &basic("bob", &format!("flood-{i}")))],
                    );
                    (r.status, r.header("retry-after").map(String::from))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let busy: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!busy.is_empty(), "no request was turned away: {statuses:?}");
    assert!(busy.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
    assert!(statuses.iter().all(|(s, _)| matches!(s, 401 | 429)));
}

/// Pingora builds the upstream request again for a retry: the credential must be stripped
/// from every attempt, not only the first.
#[test]
fn credentials_are_stripped_on_retries_too() {
    let e = echo("e", &[]);
    let failing = echo("failing", &["--status", "503"]);
    let gw = gateway(&format!(
        r#"[upstreams.pool]
targets = ["{failing}", "{live}"]
retries = 1

[consumers.alice]
api_keys = ["alice-key-123"]

[policies.keys]
kind = "api_key"
query = "api_key"

[[routes]]
name = "r"
paths = ["/"]
upstream = "pool"
policies = ["keys"]
"#,
        failing = failing.addr,
        live = e.addr
    ));
    // Round robin over a target answering 503 and a good one: half the requests are sent
    // twice, each time built anew from the client's request.
    for i in 0..8 {
        let r = get_with(&gw.url("/x"), &[("x-api-key", "alice-key-123")]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        let seen = r.json();
        assert_eq!(seen["server"], "e");
        assert!(seen["headers"].get("x-api-key").is_none(), "{seen}");
        assert_eq!(seen["headers"]["x-consumer"], "alice");
        let r = get(&gw.url("/x?api_key=alice-key-123&a=1"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.json()["query"], "a=1");
    }
}
