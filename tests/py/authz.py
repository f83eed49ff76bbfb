"""A small authorization service for the ext_authz tests: `authz.py PORT`.

Decides by the `authorization` header it is sent: `Bearer alice` and `Bearer zed` are allowed
(with `x-user-id` and `x-tenant` in the answer), `Bearer forbidden` gets 403, anything else 401
with a body of its own and a `WWW-Authenticate`. A body sent along must contain `"ok"` for an
allow. `GET /_calls` answers how many checks it made; every check is logged as JSON lines on
stderr (method, path, headers, body) for the test to read back through `/_last`.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

calls = 0
last = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        global calls, last
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/_calls":
            return self.answer(200, [("content-type", "text/plain")], str(calls).encode())
        if self.path == "/_last":
            return self.answer(200, [("content-type", "application/json")], json.dumps(last).encode())
        with lock:
            calls += 1
            last = {"method": self.command, "path": self.path, "body": body.decode("utf-8", "replace"),
                    "headers": {k.lower(): v for k, v in self.headers.items()}}
        token = self.headers.get("authorization", "")
        if body and b'"ok"' not in body:
            return self.answer(403)
        if token in ("Bearer alice", "Bearer zed"):
            user = token.split()[1]
            return self.answer(200, [("x-user-id", user), ("x-tenant", "t-" + user), ("x-secret-internal", "no")])
        if token == "Bearer forbidden":
            return self.answer(403, [("content-type", "application/json")], b'{"why":"not yours"}')
        self.answer(401, [("content-type", "application/json"), ("www-authenticate", 'Bearer realm="authz"')],
                    b'{"why":"who are you"}')

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("listening", flush=True)
server.serve_forever()
