"""What the Socket.IO tests drive: real socket.io-client sockets, a native client, a proxy.

* :class:`SioDriver` — one ``node tests/node/socketio/sio_client.mjs`` process
  running the npm ``socket.io-client``; it holds any number of sockets
  (:class:`SioSocket`), each opened with real socket.io-client options.
* :class:`NativeClient` — kizuna's native protocol over the Python
  ``websockets`` client, to check that both kinds of client share rooms.
* :class:`UpgradeRefusingProxy` — a TCP proxy in front of the server that
  refuses every WebSocket upgrade (403) and passes plain HTTP through, the way
  a corporate proxy that does not speak WebSocket behaves. It makes
  socket.io-client fall back to, or stay on, HTTP long-polling against the
  real, unmodified server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.processes import JWT_SECRET, end_child, read_json_line

__all__ = [
    "NODE_DIR",
    "TIMEOUT",
    "NativeClient",
    "SioDriver",
    "SioSocket",
    "UpgradeRefusingProxy",
    "closed_by_server",
    "token",
]

Event = dict[str, Any]

TIMEOUT = 5.0
"""Seconds any single expectation may take before the test fails."""

NODE_DIR = Path(__file__).resolve().parent.parent / "node" / "socketio"
NODE_SCRIPT = NODE_DIR / "sio_client.mjs"


def token(sub: str, *, ttl: float = 3600.0, secret: str = JWT_SECRET) -> str:
    """An HS256 JWT for ``sub``, made with PyJWT (not with kizuna's own minting code)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": int(now + ttl)}, secret, algorithm="HS256")


def node_binary() -> str:
    """``node``, or a test failure naming what to install (never a skip)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js (node) is not on PATH; the Socket.IO tests need Node >= 18")
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail(
            "tests/node/socketio/node_modules is missing: "
            "run `npm ci --prefix tests/node/socketio` first"
        )
    return node


class SioDriver:
    """One Node.js process with real socket.io-client sockets; events arrive as JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.inbox: list[Event] = []
        self._ids = itertools.count(1)
        self._names = itertools.count(1)

    @classmethod
    async def start(cls) -> SioDriver:
        process = await asyncio.create_subprocess_exec(
            node_binary(),
            str(NODE_SCRIPT),
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def _read(self) -> Event:
        event: Event = await read_json_line(self.process, "socket.io client process")
        return event

    async def expect(self, predicate: Callable[[Event], bool], within: float = TIMEOUT) -> Event:
        """The first event (already received or still to come) that matches; it is consumed."""
        async with asyncio.timeout(within):
            while True:
                for i, event in enumerate(self.inbox):
                    if predicate(event):
                        return self.inbox.pop(i)
                self.inbox.append(await self._read())

    async def drain(self, quiet: float = 0.3) -> list[Event]:
        """Every event that arrives until none has come for ``quiet`` seconds (consumed)."""
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(quiet):
                    self.inbox.append(await self._read())
        events, self.inbox = self.inbox, []
        return events

    async def open(self, url: str, **opts: Any) -> SioSocket:
        """Open a socket; returns once it connected or was refused (see ``connect_error``)."""
        name = f"s{next(self._names)}"
        await self.command(op="open", sock=name, url=url, opts=opts)
        first = await self.expect(
            lambda e: e["sock"] == name and e["event"] in ("connect", "connect_error")
        )
        return SioSocket(self, name, first)

    async def aclose(self) -> None:
        await end_child(self.process, TIMEOUT)


class SioSocket:
    """One socket.io-client socket inside a :class:`SioDriver`."""

    def __init__(self, driver: SioDriver, name: str, first: Event) -> None:
        self.driver = driver
        self.name = name
        self.connected = first["event"] == "connect"
        self.first = first
        """The ``connect`` or ``connect_error`` event the socket opened with."""

    def _mine(self, event: Event) -> bool:
        return bool(event["sock"] == self.name)

    async def ack(self, event: str, *args: Any) -> Any:
        """Emit with an acknowledgement callback; returns the server's single ack argument."""
        cid = next(self.driver._ids)
        await self.driver.command(
            op="emit", sock=self.name, id=cid, event=event, args=args, ack=True
        )
        reply = await self.driver.expect(
            lambda e: self._mine(e) and e["event"] == "ack" and e["id"] == cid
        )
        assert "error" not in reply, f"no acknowledgement for {event}{args}: {reply['error']}"
        assert len(reply["args"]) == 1, reply
        return reply["args"][0]

    async def send(self, event: str, *args: Any) -> None:
        """Emit without an acknowledgement."""
        await self.driver.command(op="emit", sock=self.name, event=event, args=args, ack=False)

    async def expect_event(
        self, name: str, where: Callable[[list[Any]], bool] = lambda args: True
    ) -> list[Any]:
        """The arguments of the next server event ``name`` (matching ``where``)."""
        event = await self.driver.expect(
            lambda e: (
                self._mine(e) and e["event"] == "message" and e["name"] == name and where(e["args"])
            )
        )
        args: list[Any] = event["args"]
        return args

    async def expect(self, kind: str, within: float = TIMEOUT) -> Event:
        """The next lifecycle event of this socket: connect, disconnect, upgrade, ..."""
        return await self.driver.expect(lambda e: self._mine(e) and e["event"] == kind, within)

    async def transport(self) -> str:
        cid = next(self.driver._ids)
        await self.driver.command(op="transport", sock=self.name, id=cid)
        event = await self.driver.expect(
            lambda e: self._mine(e) and e["event"] == "transport" and e["id"] == cid
        )
        name: str = event["name"]
        return name

    async def close(self) -> None:
        await self.driver.command(op="close", sock=self.name)


class NativeClient:
    """kizuna's native protocol (newline-delimited JSON) over the Python websockets client."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, ws_url: str, jwt_token: str) -> NativeClient:
        ws = await connect(ws_url, proxy=None, compression=None, open_timeout=TIMEOUT)
        client = cls(ws)
        await client.call("connect", token=jwt_token)
        return client

    async def expect(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for i, message in enumerate(self.inbox):
                    if predicate(message):
                        return self.inbox.pop(i)
                frame = await self.ws.recv()
                text = frame.decode() if isinstance(frame, bytes) else frame
                self.inbox.extend(json.loads(line) for line in text.split("\n") if line.strip())

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        cid = next(self._ids)
        await self.ws.send(json.dumps({"id": cid, "method": method, "params": params}))
        reply = await self.expect(lambda m: m.get("id") == cid)
        assert "error" not in reply, f"{method} failed: {reply}"
        result: dict[str, Any] = reply["result"]
        return result

    async def expect_push(self, kind: str, channel: str) -> dict[str, Any]:
        return await self.expect(lambda m: m.get("push") == kind and m.get("channel") == channel)

    async def aclose(self) -> None:
        await self.ws.close()


async def closed_by_server(ws: ClientConnection) -> list[str | bytes]:
    """Read until the server ends the connection; returns what it sent meanwhile."""
    frames: list[str | bytes] = []
    try:
        while True:
            frames.append(await ws.recv())
    except ConnectionClosed:
        return frames


class UpgradeRefusingProxy:
    """A TCP proxy to ``upstream_port`` that answers every WebSocket upgrade with 403.

    Each request is forced onto its own connection (``Connection: close``), so
    the proxy sees every request line and header block; it never parses bodies.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        """How many WebSocket upgrade requests were refused."""
        self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> UpgradeRefusingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = [line.partition(":") for line in lines[1:] if line]
            names = {name.strip().lower(): value.strip().lower() for name, _, value in headers}
            if names.get("upgrade") == "websocket":
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            self.forwarded += 1
            kept = [f"{n}:{v}" for n, _, v in headers if n.strip().lower() != "connection"]
            head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(head)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # aclose() cancels the pipes of connections still open (long-polls in flight);
            # ending quietly keeps asyncio's stream callback from logging the cancellation.
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
