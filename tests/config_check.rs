//! `pylon -t`: invalid configurations are rejected with `FILE:LINE:COL: message`, every error.

mod common;
use common::*;
use std::process::Command;

fn check(text: &str) -> (i32, String, String) {
    let dir = scratch();
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(PYLON)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

const UP: &str = "[upstreams.a]\ntargets = [\"127.0.0.1:9001\"]\n";

/// (config, line of the error, words the message must contain)
fn cases() -> Vec<(String, usize, &'static str)> {
    vec![
        // 1: TOML syntax
        ("[server]\nlisten = [\"127.0.0.1:80\"\n".into(), 2, "array"),
        // 2: unknown top-level section
        (format!("{UP}\n[sever]\nlisten = []\n"), 4, "unknown section `sever`"),
        // 3: unknown key in a route
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\npathz = [\"/\"]\n"), 6, "pathz"),
        // 4: wrong type
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\npriority = \"high\"\n"), 6, "expected i32"),
        // 5: bad duration
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nconnect_timeout = \"soon\"\n".into(), 3, "invalid duration"),
        // 6: unknown upstream
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"nope\"\n"), 5, "unknown upstream `nope`"),
        // 7: duplicate route names
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\n[[routes]]\nname = \"r\"\nupstream = \"a\"\n"), 7, "duplicate route name"),
        // 8: bad CIDR
        ("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n".into(), 2, "invalid CIDR"),
        // 9: path regex that does not compile
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\npaths = [\"~^/(unclosed\"]\n"), 6, "invalid path regex"),
        // 10: empty target list
        ("[upstreams.a]\ntargets = []\n".into(), 1, "no targets and no discovery"),
        // 11: route without an action
        (format!("{UP}[[routes]]\nname = \"r\"\npaths = [\"/\"]\n"), 4, "exactly one of"),
        // 12: route with two actions
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nrespond = {{ status = 200 }}\n"), 4, "exactly one of"),
        // 13: unknown balancer
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nbalancer = \"fastest\"\n".into(), 3, "fastest"),
        // 14: bad hash_on
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nbalancer = \"consistent_hash\"\nhash_on = \"moon\"\n".into(), 4, "invalid hash_on"),
        // 15: bad listen address
        ("[server]\nlisten = [\"localhost\"]\n".into(), 2, "invalid listen address"),
        // 16: bad method
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nmethods = [\"get\"]\n"), 6, "invalid method"),
        // 17: rewrite pattern that does not compile
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nrewrite = {{ pattern = \"(\", to = \"/\" }}\n"), 6, "invalid rewrite pattern"),
        // 18: target that is not an address
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\", \"no port here\"]\n".into(), 2, "invalid target"),
        // 19: path without a leading slash
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\npaths = [\"api\"]\n"), 6, "invalid path"),
        // 20: wildcard in the middle of a host
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nhosts = [\"api.*.com\"]\n"), 6, "invalid host"),
        // 21: respond status out of range
        ("[[routes]]\nname = \"r\"\nrespond = { status = 99 }\n".into(), 3, "invalid status"),
        // 22: hash_on without consistent_hash
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nhash_on = \"path\"\n".into(), 3, "only applies"),
        // 23: health check with a zero threshold
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nhealth_check = { kind = \"tcp\", healthy = 0 }\n".into(), 3, "nonzero"),
        // 24: target weight zero
        ("[upstreams.a]\ntargets = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n".into(), 2, "weight"),
        // 25: the same listen address twice
        ("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n".into(), 2, "given twice"),
        // 26: rewrite target that is not a path
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nrewrite = {{ pattern = \"^/a\", to = \"b\" }}\n"), 6, "must start with `/`"),
        // 27: a zero timeout would fail every request
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nread_timeout = \"0s\"\n".into(), 3, "above zero"),
        // 28: a weight that would expand to a huge selection table
        ("[upstreams.a]\ntargets = [{ addr = \"127.0.0.1:1\", weight = 4000000000 }]\n".into(), 2, "from 1 to 1000"),
        // 29: a framing header in a fixed response
        ("[[routes]]\nname = \"r\"\nrespond = { body = \"x\", headers = { \"Content-Length\" = \"9\" } }\n".into(), 1, "set by the gateway"),
        // 30: a 204 with a body
        ("[[routes]]\nname = \"r\"\nrespond = { status = 204, body = \"x\" }\n".into(), 3, "cannot have a body"),
        // 31: more retries than Pingora allows
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nretries = 50\n".into(), 1, "at most 10"),
        // 32: zero threads
        ("[server]\nthreads = 0\n".into(), 2, "nonzero"),
        // 33: a route naming an unknown policy
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\npolicies = [\"ghost\"]\n"), 6, "unknown policy `ghost`"),
        // 34: an unknown policy kind
        ("[policies.p]\nkind = \"teleport\"\n".into(), 2, "teleport"),
        // 35: an acl with both lists
        ("[policies.p]\nkind = \"acl\"\nallow = [\"a\"]\ndeny = [\"b\"]\n".into(), 1, "exactly one of `allow` or `deny`"),
        // 36: a malformed hashed key
        ("[consumers.c]\napi_keys = [\"sha256:xyz\"]\n".into(), 2, "64 hex digits"),
        // 37: one key for two consumers
        ("[consumers.a]\napi_keys = [\"same\"]\n[consumers.b]\napi_keys = [\"same\"]\n".into(), 4, "two consumers"),
        // 38: an unknown global policy
        ("[server]\nglobal_policies = [\"ghost\"]\n".into(), 2, "unknown policy"),
        // 39: an algorithm that does not exist
        ("[policies.p]\nkind = \"jwt\"\nalgorithms = [\"HS257\"]\nsecret = \"s\"\n".into(), 1, "unknown algorithm \"HS257\""),
        // 40: HS* without a secret
        ("[policies.p]\nkind = \"jwt\"\nalgorithms = [\"HS256\"]\n".into(), 1, "need a `secret`"),
        // 41: RS* without any key source
        ("[policies.p]\nkind = \"jwt\"\nalgorithms = [\"RS256\"]\n".into(), 1, "`keys` or a `jwks_url`"),
        // 42: a key that is not PEM
        ("[policies.p]\nkind = \"jwt\"\nalgorithms = [\"RS256\"]\nkeys = [\"hello\"]\n".into(), 1, "not a PEM public key"),
        // 43: an anonymous consumer that does not exist
        ("[policies.p]\nkind = \"api_key\"\nanonymous = \"ghost\"\n".into(), 1, "anonymous consumer `ghost`"),
        // 44: a password hash that is not bcrypt
        ("[consumers.c]\nbasic_auth = { user = \"c\", password_hash = \"$apr1$x$y\" }\n".into(), 2, "bcrypt"),
        // 45: one JWT subject for two consumers
        ("[consumers.a]\njwt_subject = \"s\"\n[consumers.b]\njwt_subject = \"s\"\n".into(), 4, "two consumers"),
        // 46: basic_auth with nobody to check against
        ("[policies.p]\nkind = \"basic_auth\"\n".into(), 1, "has no users"),
        // 47: a JWKS URL that is not http(s)
        ("[policies.p]\nkind = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"ftp://x/\"\n".into(), 1, "http:// or https://"),
        // 48: a rate limit of zero
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 0\nwindow = \"1s\"\n".into(), 1, "`limit` must be above zero"),
        // 49: a key part that does not exist
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 5\nwindow = \"1s\"\nkey = [\"moon\"]\n".into(), 1, "unknown key part \"moon\""),
        // 50: a cluster limit without Redis
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 5\nwindow = \"1s\"\nscope = \"cluster\"\n".into(), 1, "needs a `redis_url`"),
        // 51: a Redis URL that is not one
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 5\nwindow = \"1s\"\nscope = \"cluster\"\nredis_url = \"http://x\"\n".into(), 1, "invalid redis_url"),
        // 52: a concurrency status other than 429 or 503
        ("[policies.p]\nkind = \"concurrency_limit\"\nmax = 1\nstatus = 418\n".into(), 1, "429 or 503"),
        // 53: a zero window, at the key itself: each kind parses its own table
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 5\nwindow = \"0s\"\n".into(), 4, "above zero"),
        // 54: a sampling ratio above one
        ("[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample_ratio = 2.0\n".into(), 3, "from 0 to 1"),
        // 55: an OTLP endpoint that is not a URL
        ("[tracing]\notlp_endpoint = \"collector:4318\"\n".into(), 2, "http:// or https://"),
        // 56: a policy name that cannot go into a header
        ("[policies.\"a b\"]\nkind = \"acl\"\nallow = [\"x\"]\n".into(), 1, "may only use letters"),
        // 57: a bcrypt cost that would hold a hashing slot for minutes
        ("[consumers.c]\nbasic_auth = { user = \"c\", password_hash = \"$2b$20$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy\" }\n".into(), 2, "above the maximum"),
        // 58: a client keep-alive shorter than Pingora's one-second resolution
        ("[server]\nkeepalive_timeout = \"500ms\"\n".into(), 2, "at least 1s"),
        // 59: a request limit of zero
        ("[server]\nkeepalive_requests = 0\n".into(), 2, "nonzero"),
        // 60: a failure rate above one
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\ncircuit_breaker = { failure_rate = 1.5 }\n".into(), 3, "failure_rate must be above 0"),
        // 61: an ejection share above 100%
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\ncircuit_breaker = { max_ejection_percent = 150 }\n".into(), 3, "at most 100"),
        // 62: an unknown breaker key
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\ncircuit_breaker = { fails = 3 }\n".into(), 3, "fails"),
        // 63: dns discovery without a port
        ("[upstreams.a]\ndiscovery = { kind = \"dns\", name = \"svc.internal\" }\n".into(), 2, "needs the targets' `port`"),
        // 64: a resolver that is not an address
        ("[upstreams.a]\ndiscovery = { kind = \"srv\", name = \"_http._tcp.svc\", resolver = \"dns-server\" }\n".into(), 2, "invalid resolver"),
        // 65: file discovery without a path
        ("[upstreams.a]\ndiscovery = { kind = \"file\" }\n".into(), 2, "needs a `path`"),
        // 66: an unknown discovery kind
        ("[upstreams.a]\ndiscovery = { kind = \"consul\", name = \"x\" }\n".into(), 2, "consul"),
        // 67: a fallback on a fixed-response route
        ("[[routes]]\nname = \"r\"\nrespond = { status = 200 }\nfallback = { status = 503 }\n".into(), 4, "`fallback` needs an `upstream`"),
        // 68: a fallback status out of range
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nfallback = {{ status = 99 }}\n"), 6, "invalid fallback status"),
        // 69: both a single Redis and a cluster
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 1\nwindow = \"1s\"\nscope = \"cluster\"\nredis_url = \"redis://127.0.0.1:1\"\nredis_cluster = [\"redis://127.0.0.1:2\"]\n".into(), 1, "not both"),
        // 70: a cluster node that is not a Redis URL
        ("[policies.p]\nkind = \"rate_limit\"\nlimit = 1\nwindow = \"1s\"\nscope = \"cluster\"\nredis_cluster = [\"127.0.0.1:7000\"]\n".into(), 1, "invalid redis_cluster node"),
        // 72: a TTL floor above the lookup interval
        ("[upstreams.a]\ndiscovery = { kind = \"dns\", name = \"svc\", port = 80, interval = \"500ms\", min_ttl = \"2s\" }\n".into(), 2, "min_ttl must not be above"),
        // 73: lookups too often
        ("[upstreams.a]\ndiscovery = { kind = \"file\", path = \"t.toml\", interval = \"10ms\", min_ttl = \"1ms\" }\n".into(), 2, "at least 100ms"),
        // 71: a backoff whose cap is below its base
        ("[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\nretry_backoff = { base = \"1s\", max = \"10ms\" }\n".into(), 1, "retry_backoff.max"),
        // 74: an unknown template variable, at its value's line
        ("[policies.t]\nkind = \"request_transform\"\n[policies.t.headers.set]\nx-a = \"ok\"\nx-b = \"$user\"\n".into(), 5, "unknown variable `$user`"),
        // 75: a JSON Pointer without its leading slash
        ("[policies.t]\nkind = \"response_transform\"\njson = { remove = [\"password\"] }\n".into(), 1, "not a JSON Pointer"),
        // 76: a format for the other side
        ("[policies.t]\nkind = \"response_transform\"\nformat = \"form_to_json\"\n".into(), 1, "xml_to_json"),
        // 77: a response has no method
        ("[policies.t]\nkind = \"response_transform\"\nmethod = \"GET\"\n".into(), 1, "`method` is for request_transform"),
        // 78: an unknown body format
        ("[policies.t]\nkind = \"request_transform\"\nformat = \"yaml\"\n".into(), 3, "unknown variant"),
        // 79: `*` with credentials
        ("[policies.c]\nkind = \"cors\"\nallow_credentials = true\nallow_origins = [\n  \"https://a.example\",\n  \"*\",\n]\n".into(), 6, "browsers refuse `*`"),
        // 80: a broken origin pattern
        ("[policies.c]\nkind = \"cors\"\nallow_origins = [\"~^https://(a\"]\n".into(), 3, "invalid origin pattern"),
        // 81: an unknown compression algorithm
        ("[policies.z]\nkind = \"compression\"\nalgorithms = [\"lzma\"]\n".into(), 1, "unknown algorithm \"lzma\""),
        // 83: an aggregate part naming a path group the route does not have
        ("[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"d\"\npaths = [\"~^/d/(?P<id>[0-9]+)$\"]\naggregate = { parts = [\n  { key = \"a\", upstream = \"u\", path = \"/x/{path.user}\" },\n] }\n".into(), 7, "no group named `user`"),
        // 84: an aggregate part on an unknown upstream, and a reserved key
        ("[[routes]]\nname = \"d\"\npaths = [\"/d\"]\naggregate = { parts = [\n  { key = \"_errors\", upstream = \"nope\", path = \"/x\" },\n] }\n".into(), 5, "unknown upstream `nope`"),
        // 85: both an upstream and an aggregate
        ("[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"d\"\nupstream = \"u\"\naggregate = { parts = [{ key = \"a\", upstream = \"u\", path = \"/x\" }] }\n".into(), 4, "exactly one of `upstream`, `split`, `respond` or `aggregate`"),
        // 86: a network with host bits set, at its entry
        ("[policies.f]\nkind = \"ip_filter\"\nallow = [\n  \"10.0.0.0/8\",\n  \"10.0.0.1/8\",\n]\n".into(), 5, "is not a network"),
        // 82: a size that is not one
        ("[policies.z]\nkind = \"compression\"\nmin_size = \"big\"\n".into(), 3, "invalid size"),
        // 88: a TLS listener's certificate file that cannot be read, at its `cert`
        ("[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncertificates = [\n  { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/c.key\" },\n]\n".into(), 4, "cannot read certificate \"/nonexistent/c.pem\""),
        // 89: client_auth without the CAs to check against
        ("[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncertificates = []\nclient_auth = \"optional\"\n".into(), 4, "needs `client_ca`"),
        // 90: a default certificate that is not in the list
        ("[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncertificates = []\ndefault_certificate = 2\n".into(), 4, "index into `certificates`"),
        // 91: a TLS listener on the plain listener's address
        ("[server]\nlisten = [\"127.0.0.1:8080\"]\n[[server.tls]]\nlisten = \"127.0.0.1:8080\"\ncertificates = []\n".into(), 4, "is given twice"),
        // 92: a server name that is not one
        ("[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncertificates = [\n  { hosts = [\"a.example.com\", \"*.*.example.com\"], cert = \"/x.pem\", key = \"/x.key\" },\n]\n".into(), 4, "invalid server name \"*.*.example.com\""),
        // 93: an upstream CA file that cannot be read
        ("[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\ntls = true\nca = \"/nonexistent/ca.pem\"\n".into(), 1, "cannot read certificate \"/nonexistent/ca.pem\""),
        // 94: a gRPC fallback status that is no code's name
        (format!("{UP}[[routes]]\nname = \"r\"\nupstream = \"a\"\nfallback = {{ grpc_status = \"GONE\" }}\n"), 6, "unknown gRPC status \"GONE\""),
    ]
}

#[test]
fn invalid_configs_are_rejected_with_their_line() {
    for (i, (text, line, words)) in cases().into_iter().enumerate() {
        let (code, stderr, path) = check(&text);
        assert_eq!(code, 1, "case {}: exit code; stderr: {stderr}", i + 1);
        let prefix = format!("{path}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "case {}: expected a line starting {prefix:?} containing {words:?}, got:\n{stderr}",
            i + 1
        );
    }
}

#[test]
fn htpasswd_lines_are_checked() {
    let dir = scratch();
    let file = dir.join("htpasswd");
    let good = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(&file, format!("a:{good}\n\nb:$apr1$salt$hash\n")).unwrap();
    let (code, stderr, path) = check(&format!(
        "[policies.p]\nkind = \"basic_auth\"\nhtpasswd = \"{}\"\n",
        file.display()
    ));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{path}:1:"))
            && stderr.contains(&format!("{}:3: user `b`", file.display())),
        "{stderr}"
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let text = "[upstreams.a]\ntargets = []\n\n[[routes]]\nname = \"r\"\nupstream = \"missing\"\n\n[[routes]]\nname = \"s\"\nupstream = \"a\"\npaths = [\"~(\"]\npriority = \"x\"\n";
    let (code, stderr, path) = check(text);
    assert_eq!(code, 1);
    let lines: Vec<_> = stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{path}:1:"))),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{path}:6:"))),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{path}:12:"))),
        "{stderr}"
    );
    // Every line has a column too.
    for l in lines {
        let rest = l.strip_prefix(&format!("{path}:")).unwrap();
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{l}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{l}");
    }
}

#[test]
fn the_demo_config_is_valid() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/pylon.toml");
    let out = Command::new(PYLON)
        .args(["-t", "-c", demo])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(PYLON)
        .args(["-t", "-c", "/nonexistent/pylon.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pylon.toml:"));
}

#[test]
fn version_is_printed() {
    let out = Command::new(PYLON).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_address_in_use_stops_the_start_with_its_line() {
    // Pingora binds on a service thread, where a failed bind ends only that service: without
    // the check the process ran on, serving on none of its addresses.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let (free, admin) = (free_port(), free_port());
    let dir = scratch();
    let path = dir.join("pylon.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{free}\", \"127.0.0.1:{busy}\"]\n\
             upgrade_sock = \"{d}/u.sock\"\npid_file = \"{d}/p.pid\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n{UP}\
             [[routes]]\nname = \"r\"\nupstream = \"a\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(PYLON)
        .arg("-c")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("pylon kept running with one of its addresses taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:", path.display()))
            && stderr.contains(&format!("cannot listen on 127.0.0.1:{busy}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("{free}:")),
        "only the taken one: {stderr}"
    );
    // The free addresses were not left bound.
    std::net::TcpListener::bind(("127.0.0.1", free)).unwrap();
    std::net::TcpListener::bind(("127.0.0.1", admin)).unwrap();
    drop(taken);
}
