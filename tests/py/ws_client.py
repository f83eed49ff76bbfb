"""A WebSocket client (the `websockets` package) that sends messages of given sizes on one
connection and checks each echo byte for byte.

Usage: ws_client.py URL SPEC... where a SPEC is SIZE[xCOUNT] (bytes), pause:SECONDS (a quiet
tunnel) or close (wait until the other side closes the tunnel, and print `closed CODE`).
Prints one line per message and "ok" at the end; exits 1 at the first message that does not
come back whole.
"""
import asyncio
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def main(url, specs):
    async with connect(url, max_size=None, compression=None, open_timeout=10) as ws:
        n = 0
        for spec in specs:
            if spec.startswith("pause:"):
                await asyncio.sleep(float(spec[6:]))
                continue
            if spec == "close":
                try:
                    await asyncio.wait_for(ws.recv(), 60)
                except ConnectionClosed as e:
                    print(f"closed {e.rcvd.code if e.rcvd else 'without a close frame'}", flush=True)
                continue
            size, _, count = spec.partition("x")
            for _ in range(int(count or 1)):
                message = os.urandom(int(size))
                await ws.send(message)
                echoed = await asyncio.wait_for(ws.recv(), 60)
                n += 1
                if echoed != message:
                    print(f"message {n}: {len(echoed)} bytes back of {len(message)}")
                    sys.exit(1)
                print(f"message {n}: {len(message)} bytes echoed", flush=True)
    print("ok")


asyncio.run(main(sys.argv[1], sys.argv[2:]))
