"""An HTTP-aware proxy that blocks what corporate proxies block, for the fallback tests.

A plain TCP proxy cannot refuse a WebSocket while letting the page load; this
one reads each request's head (HTTP/1.1, keep-alive included) before passing
it on byte for byte, so a test can:

* ``refuse_websocket = True`` — answer ``Upgrade: websocket`` requests with a
  plain-text 403, the way a proxy that does not speak WebSocket does (the
  browser sees the handshake fail);
* ``refuse_sse = True`` — answer ``/connection/sse`` requests the same way;
* ``refusing = True`` — close new connections at once (the server seems down);
* ``hold = predicate`` — keep matching requests back until :meth:`release`
  (a slow network: the server moves on while the request is on its way);
* :meth:`cut_streams` — reset the connections that carry an SSE stream or a
  long poll, and :meth:`cut` every connection (a network drop);
* :meth:`stall_streams` — the connections carrying a stream or a poll stop
  moving bytes but stay open (a dead link only a heartbeat can find).

Every request that reached the server is recorded (method, target, headers),
so a test can check what the client sent: no token in a URL, the cursor it
resumed a stream with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

__all__ = ["HttpProxy", "Request"]

_REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n"
    b"Connection: close\r\n\r\nblocked by the proxy policy\n"
)
_STREAM_PATHS = ("/connection/sse", "/connection/poll")


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    refused: bool = False

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    @property
    def websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    streaming: bool = False
    stalled: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class HttpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``, request by request."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refuse_websocket = False
        self.refuse_sse = False
        self.refusing = False
        self.hold: Callable[[Request], bool] | None = None
        self.held: list[Request] = []
        self._released = asyncio.Event()
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> HttpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.refusing = True
        self.cut()
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every open connection."""
        for conn in list(self._conns):
            conn.abort()

    def cut_streams(self) -> int:
        """Reset the connections carrying an SSE stream or a long poll; how many there were."""
        streams = [c for c in self._conns if c.streaming]
        for conn in streams:
            conn.abort()
        return len(streams)

    def stall_streams(self) -> int:
        """Stop moving bytes on the stream and poll connections, leaving them open."""
        streams = [c for c in self._conns if c.streaming]
        for conn in streams:
            conn.stalled = True
        return len(streams)

    def release(self) -> None:
        """Let the held requests (and any later ones) through."""
        self.hold = None
        self._released.set()

    def seen(self, path: str) -> list[Request]:
        """The requests for ``path`` that the proxy passed on, in order."""
        return [r for r in self.requests if r.path == path and not r.refused]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            await self._serve(conn, reader)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(conn)
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            conn.abort()
            self._handlers.discard(task)

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request = _parse(head)
            self.requests.append(request)
            blocked = (request.websocket and self.refuse_websocket) or (
                request.path == "/connection/sse" and self.refuse_sse
            )
            if blocked:
                request.refused = True
                conn.client.write(_REFUSAL)
                await conn.client.drain()
                return
            if self.hold is not None and self.hold(request):
                self.held.append(request)
                await self._released.wait()
            if conn.upstream is None:
                up_reader, conn.upstream = await asyncio.open_connection(
                    "127.0.0.1", self.target_port
                )
                conn.tasks.append(asyncio.create_task(_pump(up_reader, conn.client, conn)))
            conn.streaming = conn.streaming or request.path in _STREAM_PATHS
            conn.upstream.write(head)
            length = int(request.headers.get("content-length", "0"))
            if length:
                conn.upstream.write(await reader.readexactly(length))
            await conn.upstream.drain()
            if request.websocket or "chunked" in request.headers.get("transfer-encoding", ""):
                await _pump(reader, conn.upstream, conn)  # no more request heads to read
                return


def _parse(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            if conn.stalled:  # swallowed: the peer hears nothing from now on
                continue
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not conn.stalled:
            writer.write_eof()
