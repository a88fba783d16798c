"""Clients that talk to a real ``kizuna serve`` over TCP, for the end-to-end tests.

Two independent WebSocket implementations drive the server, so that a bug
shared by the server and one client library cannot hide:

* :class:`PyClient` — the Python ``websockets`` asyncio client;
* :class:`NodeClient` — the Node.js ``ws`` package, through the script
  ``tests/node/ws_client.mjs`` run as a subprocess (stdin: frames to send;
  stdout: one JSON event per line).

Both share :class:`WireClient`: an inbox of decoded messages, commands that
await the reply with their id while keeping pushes for later, and
:meth:`WireClient.barrier` — a ``ping`` round trip. Replies and pushes share
one outbound queue per connection on the server, so everything the server
queued for this client before the ping (every publication whose publish call
had already returned) arrives before the ping's reply. That turns "nothing
more will arrive" into something a test can await instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.processes import (
    API_KEY,
    JWT_SECRET,
    KizunaProcess,
    end_child,
    read_json_line,
)

__all__ = [
    "NODE_DIR",
    "TIMEOUT",
    "Api",
    "HandshakeRefused",
    "NodeClient",
    "PeerClosed",
    "PyClient",
    "RawWebSocket",
    "WireClient",
    "split_frame",
    "token",
]

Message = dict[str, Any]
Predicate = Callable[[Message], bool]

TIMEOUT = 5.0
"""Seconds any single expectation may take before the test fails."""

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
NODE_SCRIPT = NODE_DIR / "ws_client.mjs"


def split_frame(frame: str | bytes) -> list[Message]:
    """One WebSocket frame → its messages (the server coalesces them, newline-delimited)."""
    text = frame.decode() if isinstance(frame, bytes) else frame
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def token(
    sub: str | None = "alice",
    *,
    ttl: float | None = 3600.0,
    secret: str = JWT_SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A JWT for ``sub``. ``sub=None`` / ``ttl=None`` leave that claim out (to test refusals)."""
    payload: dict[str, Any] = {"iat": int(time.time()), **claims}
    if sub is not None:
        payload["sub"] = sub
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    key = "" if algorithm == "none" else secret  # PyJWT signs "none" with an empty key
    return jwt.encode(payload, key, algorithm=algorithm)


class Api:
    """The server HTTP API of one server, called without blocking the event loop."""

    def __init__(self, http: httpx.AsyncClient, server: KizunaProcess) -> None:
        self.http = http
        self.server = server

    async def post(
        self,
        method: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST /api/<method>; ``headers`` replaces the API key header when given."""
        if headers is None:
            headers = {"Authorization": f"apikey {API_KEY}"}
        return await self.http.post(
            f"{self.server.url}/api/{method}",
            json=body if content is None else None,
            content=content,
            headers=dict(headers),
        )

    async def result(self, method: str, **params: Any) -> dict[str, Any]:
        """A call that must succeed; returns its ``result``."""
        response = await self.post(method, params)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        return await self.result("publish", channel=channel, data=data)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(self.server.url + path)


class PeerClosed(Exception):
    """The server closed the WebSocket; ``code`` is the close frame's code (1006 if none)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    """The server answered the upgrade request with an HTTP error instead of 101."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class WireClient:
    """What both clients share: the inbox, commands with ids, expectations with timeouts."""

    def __init__(self) -> None:
        self.inbox: list[Message] = []
        self.closed: PeerClosed | None = None
        self._next_id = 0

    # --- to be provided by each implementation -------------------------------------------

    async def send_raw(self, text: str) -> None:
        raise NotImplementedError

    async def _receive(self) -> list[Message]:
        """The messages of the next frame; raises PeerClosed when the connection ended."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.send_raw(json.dumps(message))

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def _pump(self) -> None:
        if self.closed is not None:
            raise self.closed
        try:
            self.inbox.extend(await self._receive())
        except PeerClosed as exc:
            self.closed = exc
            raise

    async def expect(self, predicate: Predicate, within: float = TIMEOUT) -> Message:
        """The first message (already received or still to come) that matches; it is consumed."""
        async with asyncio.timeout(within):
            while True:
                for i, message in enumerate(self.inbox):
                    if predicate(message):
                        return self.inbox.pop(i)
                await self._pump()

    async def expect_push(
        self, kind: str, channel: str | None = None, within: float = TIMEOUT
    ) -> Message:
        return await self.expect(
            lambda m: m.get("push") == kind and (channel is None or m.get("channel") == channel),
            within,
        )

    async def expect_close(self, within: float = TIMEOUT) -> PeerClosed:
        """Wait until the server closes the connection; messages received meanwhile are kept."""
        async with asyncio.timeout(within):
            while True:
                try:
                    await self._pump()
                except PeerClosed as exc:
                    return exc

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, within: float = TIMEOUT
    ) -> Message:
        """Send a command and return its whole reply (``result`` or ``error``)."""
        cid = self.next_id()
        command: dict[str, Any] = {"id": cid, "method": method}
        if params is not None:
            command["params"] = dict(params)
        await self.send(command)
        return await self.reply_to(cid, within)

    async def reply_to(self, cid: int, within: float = TIMEOUT) -> Message:
        """The reply to command ``cid`` (pushes that arrive first stay in the inbox)."""
        return await self.expect(lambda m: m.get("id") == cid, within)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """A command that must succeed; returns its result."""
        reply = await self.request(method, params)
        assert "error" not in reply, f"{method} failed: {reply}"
        result: dict[str, Any] = reply["result"]
        return result

    async def error_code(self, method: str, **params: Any) -> int:
        """A command that must fail; returns its error code."""
        reply = await self.request(method, params)
        assert "error" in reply, f"{method} unexpectedly succeeded: {reply}"
        code: int = reply["error"]["code"]
        return code

    async def connect(self, jwt_token: str | None = None) -> dict[str, Any]:
        return await self.call("connect", **({"token": jwt_token} if jwt_token else {}))

    async def barrier(self) -> list[Message]:
        """Ping round trip; returns (and consumes) every message that arrived before its reply."""
        await self.call("ping")
        before, self.inbox = self.inbox, []
        return before

    async def publications(self, channel: str) -> list[Message]:
        """Every publication push on ``channel`` received up to a barrier, in arrival order."""
        messages = await self.barrier()
        pubs: list[Message] = []
        for message in messages:
            is_pub = message.get("push") == "pub" and message.get("channel") == channel
            (pubs if is_pub else self.inbox).append(message)
        return pubs


class PyClient(WireClient):
    """The Python ``websockets`` client."""

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        max_size: int | None = 2**20,
    ) -> PyClient:
        """Open the WebSocket; raises HandshakeRefused if the server answers with HTTP."""
        try:
            ws = await connect(
                url,
                additional_headers=dict(headers or {}),
                origin=origin,  # type: ignore[arg-type]
                compression=None,
                proxy=None,
                open_timeout=TIMEOUT,
                close_timeout=2,
                max_size=max_size,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode() if exc.response.body else ""
            raise HandshakeRefused(exc.response.status_code, body) from exc
        return cls(ws)

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def _receive(self) -> list[Message]:
        try:
            frame = await self.ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise PeerClosed(rcvd.code if rcvd else 1006, rcvd.reason if rcvd else "") from exc
        return split_frame(frame)

    async def aclose(self) -> None:
        await self.ws.close()


class NodeClient(WireClient):
    """The Node.js ``ws`` client, run as ``node tests/node/ws_client.mjs`` in a subprocess."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.process = process

    @staticmethod
    def node_binary() -> str:
        """``node``, or a test failure that says what is missing (never a skip)."""
        node = shutil.which("node")
        if node is None:
            pytest.fail("Node.js (node) is not on PATH; the Node client tests need Node >= 18")
        if not (NODE_DIR / "node_modules" / "ws").is_dir():
            pytest.fail(
                "tests/node/node_modules is missing: run `npm ci --prefix tests/node` first"
            )
        return node

    @classmethod
    async def open(
        cls, url: str, *, headers: Mapping[str, str] | None = None, origin: str | None = None
    ) -> NodeClient:
        """Start the Node client and wait for the socket to open (or to be refused)."""
        args: list[str] = [str(NODE_SCRIPT), url]
        all_headers = dict(headers or {})
        if origin is not None:
            all_headers["Origin"] = origin
        for name, value in all_headers.items():
            args += ["--header", f"{name}: {value}"]
        process = await asyncio.create_subprocess_exec(
            cls.node_binary(),
            *args,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        client = cls(process)
        try:
            event = await asyncio.wait_for(client._event(), TIMEOUT)
        except BaseException:
            await client.aclose()
            raise
        if event["event"] == "open":
            return client
        await client.aclose()
        if event["event"] == "unexpected-response":
            raise HandshakeRefused(event["status"], event["body"])
        raise AssertionError(f"node client failed to open: {event}")

    async def _event(self) -> Message:
        event: Message = await read_json_line(self.process, "node client")
        return event

    async def send_raw(self, text: str) -> None:
        assert self.process.stdin is not None
        assert "\n" not in text, "the node client sends one frame per line"
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    async def _receive(self) -> list[Message]:
        while True:
            event = await self._event()
            kind = event["event"]
            if kind == "message":
                return [event["message"]]
            if kind == "close":
                raise PeerClosed(event["code"], event["reason"])
            if kind != "error":  # an error is always followed by a close event
                raise AssertionError(f"unexpected node client event: {event}")

    async def aclose(self) -> None:
        """Close the socket normally (EOF on stdin) and wait for the process to end."""
        await end_child(self.process, TIMEOUT)


# --- a hand-made WebSocket client, for peers the libraries will not imitate --------------------


class RawWebSocket:
    """A blocking socket that does the HTTP upgrade by hand and then sends and reads frames.

    Used where a real library would be too polite: a peer that never answers pings.
    """

    def __init__(self, port: int, path: str = "/connection/websocket") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line:
            raise HandshakeRefused(int(status_line.split()[1]), head.decode(errors="replace"))

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def send_text(self, text: str) -> None:
        """One masked text frame (RFC 6455 §5.3: client frames are masked)."""
        self.send_frame(0x81, text.encode())

    def send_frame(self, first_byte: int, payload: bytes) -> None:
        """Any frame: ``first_byte`` is FIN, RSV and the opcode (RFC 6455 §5.2), unchecked."""
        mask = b"\x01\x02\x03\x04"
        header = bytearray([first_byte])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        else:
            header.append(0x80 | 126)
            header += len(payload).to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def read_until_eof(self, within: float) -> tuple[list[tuple[int, bytes]], float]:
        """Read (and never answer) until the server closes TCP, or ``within`` seconds pass.

        Returns the frames seen as (opcode, payload) and the seconds it took.
        """
        started = time.monotonic()
        deadline = started + within
        data = self._buffer
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except ConnectionResetError:
                break
            except TimeoutError:
                break  # the caller sees the elapsed time reach the bound
            if not chunk:
                break
            data += chunk
        return _frames(data), time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked server frame in ``data`` (RFC 6455 §5.2)."""
    out = []
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        out.append((opcode, data[i : i + length]))
        i += length
    return out
