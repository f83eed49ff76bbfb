"""One call of the echo service, printed as one JSON line.

`grpc_client.py TARGET CALL [--tls CA --authority NAME] [--text T] [--count N] [--delay MS]
[--fail CODE] [--timeout SECONDS] [--meta KEY=VALUE]...`, CALL one of unary, server, client,
bidi. Prints `{"code": "OK", "details": ..., "texts": [...], "took_ms": ...}`: the status the
client saw (a failed call too), the details and every message's text.
"""

import argparse
import json
import time

import grpc

from grpc_stubs import echo_pb2, echo_pb2_grpc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("call", choices=["unary", "server", "client", "bidi"])
    p.add_argument("--tls")
    p.add_argument("--authority")
    p.add_argument("--text", default="hello")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--delay", type=int, default=0)
    p.add_argument("--fail", type=int, default=0)
    p.add_argument("--timeout", type=float)
    p.add_argument("--meta", action="append", default=[])
    a = p.parse_args()
    if a.tls:
        with open(a.tls, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", a.authority)] if a.authority else []
        channel = grpc.secure_channel(a.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(a.target)
    stub = echo_pb2_grpc.EchoStub(channel)
    metadata = [tuple(m.split("=", 1)) for m in a.meta]
    msg = echo_pb2.Msg(text=a.text, count=a.count, delay_ms=a.delay, fail=a.fail)
    many = [echo_pb2.Msg(text=f"{a.text}{i}") for i in range(a.count)]
    kw = {"timeout": a.timeout, "metadata": metadata}
    texts, code, details = [], "OK", ""
    start = time.monotonic()
    try:
        if a.call == "unary":
            texts = [stub.Unary(msg, **kw).text]
        elif a.call == "server":
            texts = [m.text for m in stub.ServerStream(msg, **kw)]
        elif a.call == "client":
            texts = [stub.ClientStream(iter(many), **kw).text]
        else:
            texts = [m.text for m in stub.Bidi(iter(many), **kw)]
    except grpc.RpcError as e:
        code, details = e.code().name, e.details()
    took = (time.monotonic() - start) * 1000
    print(json.dumps({"code": code, "details": details, "texts": texts, "took_ms": took}))


if __name__ == "__main__":
    main()
