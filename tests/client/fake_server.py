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

__all__ = ["FakeServer", "Script", "answer_connect", "behave"]

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
