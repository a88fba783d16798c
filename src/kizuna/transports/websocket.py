"""The native protocol over WebSocket, as a raw ASGI endpoint.

Framing, heartbeats and the close handshake belong to uvicorn's
``websockets-sansio`` protocol (the ``websockets`` library's sans-I/O core);
this module only moves frames between ASGI and :class:`~kizuna.core.client.Client`:

1. Before the upgrade: check the Origin (403) and, if the handshake carries a
   token (``Authorization: Bearer`` or ``?token=``), verify it (401). Both
   refusals are plain HTTP responses with a JSON error body, sent before the
   101, so a browser page never gets a socket it may not have.
2. Accept, then hand every text or binary message to the client.
3. The connect command must arrive within ``connect_timeout`` (3007).
4. When the peer goes, tell the client; when the client closes, send a close
   frame carrying the disconnect code (RFC 6455 §7.4.2: 3000–4999 are ours).
"""

from __future__ import annotations

import functools
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State

from kizuna.core.client import Client
from kizuna.core.node import Node
from kizuna.exceptions import AuthError
from kizuna.transports.common import HandshakeSettings, check_handshake, deny_body
from kizuna.transports.websocket_protocol import DetachableWebSocketProtocol

__all__ = ["WebSocketEndpoint", "WebSocketTransport"]

Scope = dict[str, Any]
Receive = Any
Send = Any


class _LastFrame:
    """The wire form of the last text frame written, for the next subscriber of the fan-out.

    A server's frames are not masked, so without compression a message's wire bytes
    are the same for every connection; the node's flush writes the same bytes
    object to every subscriber of a publication one after another — or, when
    several messages were queued, equal bytes joined per subscriber (compared in
    C: far cheaper than framing again). The ``websockets`` library frames it once
    (its header via :func:`_text_header`), and the other subscribers get those bytes.
    """

    __slots__ = ("_frame", "_wire")

    def __init__(self) -> None:
        self._frame: bytes | None = None
        self._wire = b""

    def text_frame(self, frame: bytes) -> bytes:
        if frame is not self._frame and frame != self._frame:
            self._wire = _text_header(len(frame)) + frame
            self._frame = frame
        return self._wire


@functools.lru_cache(maxsize=4096)
def _text_header(length: int) -> bytes:
    """The header ``websockets`` puts before an unmasked text payload of ``length`` bytes.

    Everything in an unmasked frame but its payload depends only on the payload's
    length, and a server's messages come in a few thousand lengths at most; the library
    still frames (``Frame.serialize`` of a payload that long), once per length. One
    ``serialize`` took 0.69 µs against 0.08 µs for this lookup and the concatenation —
    it ran twice per publish to a channel of one (the delivery and the reply).
    """
    wire = Frame(Opcode.TEXT, bytes(length)).serialize(mask=False)
    return wire[: len(wire) - length]


_wire = _LastFrame()


class WebSocketTransport:
    """Transport port over an ASGI WebSocket ``send``."""

    __slots__ = ("_closed", "_protocol", "_send")

    name = "websocket"

    def __init__(self, send: Send) -> None:
        self._send = send
        self._closed = False
        # uvicorn's send is a method of its websockets-sansio protocol object; with
        # it, frames can be written without the ASGI round trip (see write_nowait).
        protocol = getattr(send, "__self__", None)
        fast = all(hasattr(protocol, a) for a in ("conn", "transport", "writable", "close_sent"))
        self._protocol = protocol if fast else None

    @property
    def protocol(self) -> object:
        """uvicorn's protocol object behind ``send`` (None on other ASGI servers)."""
        return getattr(self._send, "__self__", None)

    def write_nowait(self, frame: bytes) -> bool:
        """Write a text frame now, if the connection is open and its buffer has room.

        The fan-out's fast path (docs/decisions/0001-synchronous-writes.md): the
        ``websockets`` protocol object frames the message — no decode to str and
        encode back as the ASGI ``text`` field needs, no coroutine, no task.
        False when the connection applies backpressure or is closing: the core
        then falls back to :meth:`write`, which waits.
        """
        protocol = self._protocol
        if (
            protocol is None
            or self._closed
            or protocol.close_sent
            or not protocol.writable.is_set()
            or protocol.transport.is_closing()
        ):
            return False
        conn = protocol.conn
        if conn.extensions:  # compression: each connection deflates with its own context
            conn.send_text(frame)
            protocol.transport.write(b"".join(conn.data_to_send()))
        elif conn.state is State.OPEN:
            protocol.transport.write(_wire.text_frame(frame))
        else:
            return False
        return True

    async def write(self, frame: bytes) -> None:
        # Text frames: every browser and client library hands JSON text straight to the app.
        await self._send({"type": "websocket.send", "text": frame.decode()})

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except Exception:  # the peer is already gone: nothing left to tell it
            return


class WebSocketEndpoint:
    """ASGI app for ``/connection/websocket``."""

    def __init__(self, node: Node, settings: HandshakeSettings) -> None:
        self.node = node
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        verdict = await check_handshake(self.node, self.settings, scope, WebSocketTransport.name)
        if verdict.error is not None:
            await self._deny(scope, send, verdict.status, verdict.error)
            return
        protocol = getattr(send, "__self__", None)
        if isinstance(protocol, DetachableWebSocketProtocol):
            if not protocol.accept_now(self.node.deadlines):
                return  # the peer left during the handshake
        else:
            await send({"type": "websocket.accept"})
        client = Client(
            self.node,
            WebSocketTransport(send),
            credentials=verdict.credentials,
            remote_addr=verdict.remote_addr,
        )
        client.start_connect_deadline(self.node.options.connect_timeout)
        if isinstance(protocol, DetachableWebSocketProtocol):
            # From here frames go straight to the client and this task ends: an open
            # connection costs no task, queue or handshake headers (websocket_protocol.py).
            protocol.detach(client)
            return
        await self._serve(client, receive)

    @staticmethod
    async def _serve(client: Client, receive: Receive) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await client.handle_frame(data)
            elif kind == "websocket.disconnect":
                client.transport_closed(int(message.get("code", 1006)))
                return

    @staticmethod
    async def _deny(scope: Scope, send: Send, status: int, error: AuthError) -> None:
        body = deny_body(error)
        if "websocket.http.response" in scope.get("extensions", {}):
            headers = [(b"content-type", b"application/json")]
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # servers without the denial-response extension answer a bare 403
            await send({"type": "websocket.close", "code": 1008})
