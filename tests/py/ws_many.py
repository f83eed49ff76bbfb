"""Many WebSocket tunnels open at once: `ws_many.py URL N`.

Opens N connections together, then sends a different message on each and checks its echo,
prints `holding N` and keeps them all open until stdin closes, then closes them. Exits 1 if a
connection fails or an echo is wrong.
"""
import asyncio
import resource
import sys

from websockets.asyncio.client import connect


async def main(url, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tunnels = await asyncio.gather(
        *(connect(url, compression=None, open_timeout=60) for _ in range(n)))
    for i, ws in enumerate(tunnels):
        await ws.send(f"message {i}")
    for i, ws in enumerate(tunnels):
        got = await asyncio.wait_for(ws.recv(), 60)
        if got != f"message {i}":
            print(f"tunnel {i}: {got!r}", flush=True)
            sys.exit(1)
    print(f"holding {len(tunnels)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(ws.close() for ws in tunnels))
    print("closed", flush=True)


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
