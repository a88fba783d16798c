"""A deadline for request headers: slowloris protection uvicorn does not have.

uvicorn's keep-alive timeout only covers the quiet time *between* requests; a
client that opens a connection and sends a header byte every few seconds holds
a socket (and, at scale, the file-descriptor table) forever. This subclass of
uvicorn's httptools protocol gives every request ``timeout`` seconds from its
first byte (or from the connection, for the first request) to finish its
headers, and closes the connection otherwise. A WebSocket handshake is a
request like any other, so half-open handshakes are covered too.

It also hands a WebSocket upgrade to kizuna's WebSocket protocol as the request
httptools parsed, instead of as bytes to be parsed again, and answers one that
the ``websockets`` library would not parse with 400, 414 or 431 (websocket_protocol.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kizuna.transports.websocket_protocol import (
    DetachableWebSocketProtocol,
    RefusedHandshake,
    handshake_request,
)

__all__ = ["guarded_http_protocol"]


def guarded_http_protocol(timeout: float, on_timeout: Callable[[], None]) -> type[asyncio.Protocol]:
    """An HttpToolsProtocol class whose requests must send their headers within ``timeout``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                on_timeout()
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self) -> None:
            if self.ws_protocol_class is not DetachableWebSocketProtocol:
                super().handle_websocket_upgrade()
            else:  # uvicorn's upgrade, without writing the request out to be parsed again
                request = handshake_request(self.scope["method"], self.url, self.headers)
                if isinstance(request, RefusedHandshake):
                    self._refuse(request)
                    return
                self.connections.discard(self)
                protocol = DetachableWebSocketProtocol(
                    config=self.config, server_state=self.server_state, app_state=self.app_state
                )
                secure = self.scheme == "https"
                protocol.take_over(self.transport, request, self.server, self.client, secure)
                self.transport.set_protocol(protocol)
            # The WebSocket protocol has the socket now; this object never hears of it
            # again (no connection_lost, where uvicorn drops the parser). The parser holds
            # this object's bound methods: left as it is, the pair — and the socket's
            # transport through it — could be freed only by a full cyclic-GC pass.
            self.parser = None  # type: ignore[assignment]

        def _refuse(self, refused: RefusedHandshake) -> None:
            """Answer a handshake websockets would not parse, as uvicorn answers a bad request."""
            body = f"Failed to open a WebSocket connection: {refused.reason}.\n".encode()
            head = [STATUS_LINE[refused.status]]
            head += [
                name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
            ]
            head.append(b"content-type: text/plain; charset=utf-8\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return GuardedHttpToolsProtocol
