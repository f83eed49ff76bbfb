"""The echo service over h2c: `grpc_server.py PORT [NAME] [--down]`. Prints `listening` once it
serves.

Each answer says which server it came from and how long the call had left when it arrived (the
`grpc-timeout` the gateway sent), as `NAME|text|left_ms`. `--down`: every unary call is answered
`UNAVAILABLE`, as a server shedding load does.
"""

import sys
import time
from concurrent import futures

import grpc

from grpc_stubs import echo_pb2, echo_pb2_grpc


def answer(name, msg, context):
    if DOWN:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is down")
    if msg.delay_ms:
        time.sleep(msg.delay_ms / 1000)
    if msg.fail:
        context.abort(grpc.StatusCode(tuple(c for c in grpc.StatusCode if c.value[0] == msg.fail)[0]),
                      f"{name} failed as asked")
    left = context.time_remaining()
    left = -1 if left is None else int(left * 1000)
    return echo_pb2.Msg(text=f"{name}|{msg.text}|{left}")


class Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, name):
        self.name = name

    def Unary(self, msg, context):
        return answer(self.name, msg, context)

    def ServerStream(self, msg, context):
        for i in range(msg.count):
            yield echo_pb2.Msg(text=f"{self.name}|{msg.text}-{i}")

    def ClientStream(self, msgs, context):
        texts = [m.text for m in msgs]
        return echo_pb2.Msg(text=f"{self.name}|{'+'.join(texts)}", count=len(texts))

    def Bidi(self, msgs, context):
        for m in msgs:
            yield echo_pb2.Msg(text=f"{self.name}|{m.text}")


DOWN = "--down" in sys.argv


def main():
    args = [a for a in sys.argv[1:] if a != "--down"]
    port = int(args[0])
    name = args[1] if len(args) > 1 else "echo"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(name), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
