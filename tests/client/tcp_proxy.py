"""A TCP proxy that a test can cut, stall or turn away, to make networks fail on purpose.

It sits between a client and a real server (``kizuna serve``) and forwards
bytes both ways, untouched. The failures it makes are the ones a client meets
in the wild:

* :meth:`TcpProxy.cut` — every open connection is reset (a NAT dropping its
  table, a load balancer restarting): the client sees a closed socket;
* :meth:`TcpProxy.stall` — open connections stop moving bytes in either
  direction but stay open (a dead Wi-Fi link, a hung middlebox): only a
  heartbeat can tell;
* ``refusing = True`` — new connections are closed as soon as they arrive
  (the way to keep a client away while the test publishes behind its back).

Used by the Python client tests and the browser tests (the page is loaded
through the proxy, so its WebSocket goes through it too).
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]


class _Pair:
    __slots__ = ("client", "stalled", "tasks", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.stalled = False
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refusing = False
        self.accepted = 0
        """Connections accepted so far (refused ones included): counts client attempts."""
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.refusing = True
        self.cut()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def cut(self) -> None:
        """Reset every open connection."""
        for pair in list(self._pairs):
            pair.abort()
        self._pairs.clear()

    def stall(self) -> None:
        """Stop moving bytes on every open connection, leaving them open."""
        for pair in self._pairs:
            pair.stalled = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.ensure_future(self._pump(pair, reader, up_writer)),
            asyncio.ensure_future(self._pump(pair, up_reader, writer)),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)
        self._pairs.discard(pair)
        pair.abort()

    @staticmethod
    async def _pump(
        pair: _Pair, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if pair.stalled:  # swallow everything from now on; the peer hears nothing
                    continue
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, ConnectionError):
            if not pair.stalled and writer.can_write_eof():
                writer.write_eof()
