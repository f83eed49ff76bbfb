"""A WebSocket echo server (the `websockets` package): each message comes back as it came.

Usage: ws_echo.py PORT. Prints "listening" once it accepts connections. No size limit and no
compression, so what the gateway tunnels is exactly what the client sent.
"""
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(port):
    async with serve(echo, "127.0.0.1", port, max_size=None, compression=None):
        print("listening", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main(int(sys.argv[1])))
