"""The ``py-websockets`` peer: a minimal broadcast server on ``websockets`` (asyncio API).

It speaks the guide's chat protocol (section 5): ``{"type": "subscribe", "channel": C}``
and ``{"type": "message", "channel": C, "user": U, "content": X}`` in, and
``{"user": U, "content": X, "timestamp": MS}`` out to every subscriber of C, sent with
``websockets.broadcast()`` (one encode, no per-recipient await). It is what a careful
Python developer writes in thirty lines, so it is the baseline kizuna has to beat.

Like kizuna it runs on uvloop and without permessage-deflate (kizuna turns it off by
default; the load generator does not offer it either), so the comparison is of the
servers' own work, not of their defaults.

Run: ``python bench/peers/py_websockets_server.py --port 8765``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from websockets.asyncio.server import ServerConnection, broadcast, serve

channels: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    joined: set[str] = set()
    try:
        async for raw in ws:
            data = json.loads(raw)
            kind = data.get("type")
            if kind == "subscribe":
                channel = data["channel"]
                channels.setdefault(channel, set()).add(ws)
                joined.add(channel)
            elif kind == "message":
                message = json.dumps(
                    {
                        "user": data.get("user"),
                        "content": data.get("content"),
                        "timestamp": int(time.time() * 1000),
                    },
                    separators=(",", ":"),
                )
                broadcast(channels.get(data["channel"], ()), message)
    finally:
        for channel in joined:
            subscribers = channels.get(channel)
            if subscribers is not None:
                subscribers.discard(ws)
                if not subscribers:
                    del channels[channel]


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, compression=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.host, args.port))
    except ImportError:
        asyncio.run(main(args.host, args.port))
