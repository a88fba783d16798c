"""A tiny misbehaving server: a real ``websockets`` server whose replies the test scripts.

Each connection runs ``script(conn, n)`` where ``n`` counts connections from 1,
so a test can make the first connection send garbage and the second behave,
and watch the client recover. Used by the Python and the browser client tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

__all__ = [
    "FakeServer",
    "Script",
    "answer_connect",
    "behave",
    "hole_then_replay",
    "receive_command",
]

Script = Callable[[ServerConnection, int], Awaitable[None]]


async def receive_command(conn: ServerConnection) -> dict[str, Any]:
    command: dict[str, Any] = json.loads(await conn.recv())
    return command


async def answer_connect(conn: ServerConnection) -> None:
    """Read the connect command and accept it the way kizuna does."""
    command = await receive_command(conn)
    assert command["method"] == "connect", command
    reply = {"id": command["id"], "result": {"client": "fake", "version": "0", "expires": False}}
    await conn.send(json.dumps(reply))


async def behave(conn: ServerConnection) -> None:
    """Answer connect, then every subscribe (without history) and ping, until the client goes."""
    await answer_connect(conn)
    async for raw in conn:
        command = json.loads(raw)
        await conn.send(json.dumps({"id": command["id"], "result": {}}))


def hole_then_replay(sent: list[dict[str, Any]]) -> Script:
    """Publications 2 then 5 (3 and 4 shed); replays 3..6 when subscribed again from 2.

    Every command the client sends is appended to ``sent``.
    """

    async def script(conn: ServerConnection, n: int) -> None:
        await answer_connect(conn)
        first = await receive_command(conn)
        sent.append(first)
        pub = {"push": "pub", "channel": "chat:hole", "epoch": "e"}
        top = {"recoverable": True, "offset": 1, "epoch": "e"}
        lines = [
            {"id": first["id"], "result": top},
            {**pub, "data": 2, "offset": 2},
            {**pub, "data": 5, "offset": 5},  # 3 and 4 were shed
            {**pub, "data": 6, "offset": 6},  # ignored until recovered
        ]
        await conn.send("\n".join(json.dumps(line) for line in lines))
        unsubscribe, again = await receive_command(conn), await receive_command(conn)
        sent.extend([unsubscribe, again])
        await conn.send(json.dumps({"id": unsubscribe["id"], "result": {}}))
        replay = [{"data": i, "offset": i} for i in (3, 4, 5, 6)]
        result = {**top, "offset": 6, "recovered": True, "publications": replay}
        await conn.send(json.dumps({"id": again["id"], "result": result}))
        await conn.send(json.dumps({**pub, "data": 7, "offset": 7}))
        await conn.wait_closed()

    return script


class FakeServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.port = 0
        self.connected = asyncio.Event()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def _handle(self, conn: ServerConnection) -> None:
        self.connections += 1
        self.connected.set()
        await self.script(conn, self.connections)

    async def __aenter__(self) -> FakeServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
