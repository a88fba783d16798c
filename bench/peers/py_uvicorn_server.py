"""The ``py-uvicorn`` peer: the py-websockets server's thirty lines as an ASGI app on uvicorn.

Same protocol and behaviour as bench/peers/py_websockets_server.py (the guide's
``subscribe`` / ``message``, one encode per message, no per-recipient wait), but
served the way kizuna is: uvicorn with httptools, uvloop and the
``websockets-sansio`` protocol, one ASGI task per connection. Against
py-websockets it shows what uvicorn's HTTP upgrade and ASGI cost before any of
kizuna's own work; against kizuna, what kizuna adds on top of uvicorn.

Sends go through ``send()`` without awaiting each recipient in turn: the
messages for all subscribers are started together (``asyncio.gather``), the
nearest ASGI has to ``websockets.broadcast()``.

Run: ``python bench/peers/py_uvicorn_server.py --port 8765``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Send = Callable[[dict[str, Any]], Awaitable[None]]
channels: dict[str, set[Send]] = {}


async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    joined: set[str] = set()
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            data = json.loads(event.get("text") or event.get("bytes") or b"{}")
            kind = data.get("type")
            if kind == "subscribe":
                channel = data["channel"]
                channels.setdefault(channel, set()).add(send)
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
                out = {"type": "websocket.send", "text": message}
                recipients = channels.get(data["channel"], ())
                await asyncio.gather(*(s(out) for s in recipients), return_exceptions=True)
    finally:
        for channel in joined:
            subscribers = channels.get(channel)
            if subscribers is not None:
                subscribers.discard(send)
                if not subscribers:
                    del channels[channel]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
