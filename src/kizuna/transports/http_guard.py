"""Limits on request heads that uvicorn does not have: a deadline and a size.

uvicorn's keep-alive timeout only covers the quiet time *between* requests; a
client that opens a connection and sends a header byte every few seconds holds
a socket (and, at scale, the file-descriptor table) forever. This subclass of
uvicorn's httptools protocol gives every request ``timeout`` seconds from its
first byte (or from the connection, for the first request) to finish its
headers, and closes the connection otherwise. A WebSocket handshake is a
request like any other, so half-open handshakes are covered too.

Nor does uvicorn's httptools protocol bound the size of a head: within that
deadline one connection could send gigabytes of header lines, all kept in
memory. Past ``max_head`` bytes the request is answered with 431 and the
connection closed.

It also hands a WebSocket upgrade to kizuna's WebSocket protocol as the request
httptools parsed, instead of as bytes to be parsed again, and answers one that
the ``websockets`` library would not parse with 400, 414 or 431 (websocket_protocol.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kizuna.exceptions import KizunaError
from kizuna.transports.websocket_protocol import (
    DetachableWebSocketProtocol,
    RefusedHandshake,
    handshake_request,
)

__all__ = ["MAX_REQUEST_HEAD", "guarded_http_protocol"]

MAX_REQUEST_HEAD = 64 * 1024
"""Bytes a request line and its headers may take (Node.js allows 16 KiB, nginx 32 KiB)."""


class _HeadTooLarge(KizunaError):
    """Stops httptools' parse of a request head over the limit (see send_400_response)."""


def guarded_http_protocol(
    timeout: float, on_refused: Callable[[str], None], max_head: int = MAX_REQUEST_HEAD
) -> type[asyncio.Protocol]:
    """An HttpToolsProtocol class whose requests must send their headers within ``timeout``
    and within ``max_head`` bytes; ``on_refused`` hears of each refusal by the limit's name
    (``handshake_timeout``, ``request_head``)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_over = 0
        """Bytes of a finished head's request line and headers, when it was over the limit."""
        _head_unfinished = 0
        """Bytes of the current head read in whole reads that did not finish it."""

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._head_unfinished = 0

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                on_refused("handshake_timeout")
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def send_400_response(self, msg: str) -> None:
            if self._head_over <= max_head:
                super().send_400_response(msg)
            elif not self.transport.is_closing():
                self._refuse_head()

        def on_headers_complete(self) -> None:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            self._disarm()
            if size > max_head:
                # Raised inside httptools' feed_data, this stops the request; uvicorn then
                # answers 400 through send_400_response, which answers 431 instead.
                self._head_over = size
                raise _HeadTooLarge
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            head_open = self._deadline is not None
            super().data_received(data)
            # A head that never ends never reaches on_headers_complete, and httptools
            # buffers it: count the reads that leave it unfinished — each was head from
            # its first byte to its last (one that finishes it disarmed, and reset this).
            if head_open and self._deadline is not None:
                self._head_unfinished += len(data)
                if self._head_unfinished > max_head and not self.transport.is_closing():
                    self._refuse_head()

        def _refuse_head(self) -> None:
            self._disarm()
            on_refused("request_head")
            self._answer(431, f"The request head is over {max_head} bytes.\n")

        def handle_websocket_upgrade(self) -> None:
            if self.ws_protocol_class is not DetachableWebSocketProtocol:
                super().handle_websocket_upgrade()
            else:  # uvicorn's upgrade, without writing the request out to be parsed again
                request = handshake_request(self.scope["method"], self.url, self.headers)
                if isinstance(request, RefusedHandshake):
                    reason = f"Failed to open a WebSocket connection: {request.reason}.\n"
                    self._answer(request.status, reason)
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

        def _answer(self, status: int, text: str) -> None:
            """Refuse the request in plain text and close, as uvicorn answers a bad request."""
            body = text.encode()
            head = [STATUS_LINE[status]]
            head += [
                name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
            ]
            head.append(b"content-type: text/plain; charset=utf-8\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return GuardedHttpToolsProtocol
