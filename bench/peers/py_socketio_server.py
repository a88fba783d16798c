"""The ``py-socketio`` peer: the guide's Socket.IO chat on plain python-socketio.

The guide's section 3 server (Node's ``socket.io``) ported line for line to python-socketio:
namespace ``/chat``; ``joinRoom(roomId)`` enters the room and tells it ``userJoined
{userId, room}``; ``message({roomId, content})`` sends the room ``newMessage {userId,
content, timestamp}``; ``leaveRoom(roomId)`` leaves. No authentication, no history, one
process. It is what a Python developer gets from the guide and python-socketio's own
documentation, so it is the baseline kizuna's Socket.IO endpoint has to beat.

One addition to the guide: ``joinRoom`` returns ``{ok, room}``, which python-socketio
sends as the acknowledgement when the client asks for one (the load generator does, to
know when a subscriber is in the room; kizuna answers ``joinRoom`` the same way).

Like kizuna it runs as an ASGI app (``async_mode="asgi"``) on uvicorn with uvloop,
httptools and the same WebSocket layer kizuna uses (``websockets-sansio``), compression off
(the load generator's clients are WebSocket-only: ``transports: ['websocket']``), so the
comparison is of the Socket.IO servers' own work.

Run: ``python bench/peers/py_socketio_server.py --port 8765``
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvicorn

NAMESPACE = "/chat"

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", http_compression=False)
app = socketio.ASGIApp(sio)


@sio.on("joinRoom", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
async def join_room(sid: str, room_id: str) -> dict[str, Any]:
    await sio.enter_room(sid, room_id, namespace=NAMESPACE)
    await sio.emit("userJoined", {"userId": sid, "room": room_id}, to=room_id, namespace=NAMESPACE)
    return {"ok": True, "room": room_id}


@sio.on("message", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
async def message(sid: str, data: dict[str, Any]) -> None:
    payload = {"userId": sid, "content": data["content"], "timestamp": int(time.time() * 1000)}
    await sio.emit("newMessage", payload, to=data["roomId"], namespace=NAMESPACE)


@sio.on("leaveRoom", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
async def leave_room(sid: str, room_id: str) -> None:
    await sio.leave_room(sid, room_id, namespace=NAMESPACE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
    )
