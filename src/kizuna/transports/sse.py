"""Server-Sent Events: ``GET /connection/sse?channels=…`` streams publications.

Each ``pub`` event's ``id:`` is a cursor over *all* the stream's channels, so
the browser's automatic reconnect (which sends ``Last-Event-ID``) resumes
exactly after the last event it saw — on this node or any other.

Stream, step by step
--------------------
1. Before any byte of the stream: check the query (107), the cursor
   (``Last-Event-ID`` header, else ``?cursor=``; 107 if malformed), the Origin
   (403), the token (header, ``?token=`` or the ``kizuna_token`` cookie; 401),
   and read access to every channel (403/404) — as JSON errors. A channel that
   fails later (broker down) gets an ``event: subscribe_error`` with its code.
2. Answer 200 ``text/event-stream`` with headers that stop proxy buffering,
   and an ``event: connected`` carrying the connection id.
3. Subscribe to each channel through the node, recovering from the cursor.
   A channel the history cannot bridge gets an ``event: gap`` (never a silent
   gap); its position restarts at the current top.
4. Every queued push becomes an event (``pub``, ``join``, ``leave``,
   ``disconnect``). A comment line every ``ping_interval`` keeps proxies from
   timing the stream out.

Clients publish with ``POST /connection/publish`` (see http_publish.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from kizuna.core.client import Client
from kizuna.core.node import Node
from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.cursor import decode_cursor, encode_cursor
from kizuna.protocol.handshake import parse_query
from kizuna.protocol.messages import StreamPosition
from kizuna.transports.common import (
    RAW_SEND,
    HandshakeSettings,
    anonymous_refused,
    channels_param,
    check_handshake,
    error_body,
    http_status,
    scope_headers,
)

__all__ = ["SSEEndpoint", "SSETransport"]

TRANSPORT = "sse"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
]
# Lines queued for an SSE client only: where a channel starts (no event), and gaps.
_POSITION = "position"
_GAP = "gap"


def _escape_line_separators(frame: bytes) -> bytes:
    """U+2028, U+2029 and U+0085 as JSON escapes.

    JSON allows them raw inside strings, and SSE does not split on them, but
    many line readers (Python's str.splitlines, httpx's aiter_lines) do, and
    would cut an event's data in half. They can only occur inside JSON strings,
    so escaping them changes no value.
    """
    return (
        frame.replace(b"\xe2\x80\xa8", b"\\u2028")
        .replace(b"\xe2\x80\xa9", b"\\u2029")
        .replace(b"\xc2\x85", b"\\u0085")
    )


def _marker(kind: str, channel: str, position: StreamPosition) -> bytes:
    return orjson.dumps(
        {"push": kind, "channel": channel, "offset": position.offset, "epoch": position.epoch}
    )


@dataclass(frozen=True, slots=True)
class _Line:
    """What one queued line means for an SSE stream, decoded once for every stream."""

    kind: bytes
    data: bytes
    channel: str | None = None
    position: StreamPosition | None = None
    """Where the line moves its channel's cursor (then the event carries an ``id:``)."""
    event: bytes | None = None
    """The whole event, when it carries no cursor and so is the same for every stream."""


_POSITION_KIND = _POSITION.encode()


class _LineCache:
    """Queued lines, decoded once for every stream.

    A fan-out queues the same bytes object for every subscriber, so a thousand
    SSE streams would decode the same JSON a thousand times; keyed by the bytes
    (whose hash Python keeps in the object), each line is decoded once. Lines
    unique to one stream (replies) pass through too, so the cache starts afresh
    when it holds ``budget`` bytes.
    """

    __slots__ = ("_held", "_lines", "budget")

    def __init__(self, budget: int = 4 * 1024 * 1024) -> None:
        self.budget = budget
        self._lines: dict[bytes, _Line] = {}
        self._held = 0

    def get(self, data: bytes) -> _Line:
        line = self._lines.get(data)
        if line is not None:
            return line
        message = orjson.loads(data)
        kind = message.get("push", "reply")
        if kind in (_POSITION, _GAP) or (kind == "pub" and "offset" in message):
            position = StreamPosition(message["offset"], message["epoch"])
            line = _Line(kind.encode(), data, message["channel"], position)
        else:
            event = b"event: %s\ndata: %s\n\n" % (kind.encode(), data)
            line = _Line(kind.encode(), data, event=event)
        if self._held + len(data) > self.budget:
            self._lines.clear()
            self._held = 0
        self._lines[data] = line
        self._held += len(data)
        return line


_line = _LineCache().get


class _LastChunk:
    """The chunk written for the last cursor-less frame, for the fan-out's next stream.

    As for WebSocket (websocket.py ``_LastFrame``): the node's flush writes the same
    frame — or equal bytes, when several messages were coalesced — to every
    subscriber of a publication in a row, and events without an ``id:`` are the same
    for every stream, so the chunk is built once. Frames with a cursor are per
    stream and never kept.
    """

    __slots__ = ("chunk", "frame", "goodbye")

    def __init__(self) -> None:
        self.frame: bytes | None = None
        self.chunk = b""
        self.goodbye = False

    def keep(self, frame: bytes, chunk: bytes, goodbye: bool) -> None:
        self.frame, self.chunk, self.goodbye = frame, chunk, goodbye


_last_chunk = _LastChunk()


class SSETransport:
    """Turns queued frames into SSE events, keeping the cursor the event ids carry."""

    __slots__ = ("_closed", "_cycle", "_said_goodbye", "_send", "_shared", "positions")

    name = TRANSPORT

    def __init__(self, send: Any, raw_send: Any = None) -> None:
        self._send = send
        self._closed = False
        self._said_goodbye = False  # a disconnect push (drain advice) was already written
        self._shared = False  # the last frame's events carry no cursor: any stream's alike
        self.positions: dict[str, StreamPosition] = {}
        # uvicorn's raw send is a method of its request-response cycle; with it, body
        # chunks can be written without the ASGI round trip (see write_nowait).
        cycle = getattr(raw_send, "__self__", None)
        fast = all(
            hasattr(cycle, a)
            for a in ("transport", "flow", "chunked_encoding", "response_complete", "disconnected")
        )
        self._cycle = cycle if fast else None

    def write_nowait(self, frame: bytes) -> bool:
        """Write the frame's events now as one chunk, if the response has room for them.

        The fan-out's fast path, as for WebSocket (docs/decisions/0001-synchronous-
        writes.md): no writer task and no trip through the middleware's send wrappers
        per subscriber. It writes what uvicorn's ``send`` would write for a body
        message of a chunked response: ``<size in hex>\r\n<body>\r\n``. False when
        the connection applies backpressure, has ended, or is not uvicorn's: the core
        then falls back to :meth:`write`.
        """
        cycle = self._cycle
        if (
            cycle is None
            or self._closed
            or cycle.disconnected
            or cycle.response_complete
            or not cycle.chunked_encoding
            or cycle.flow.write_paused
            or cycle.transport.is_closing()
        ):
            return False
        last = _last_chunk
        if frame is last.frame or frame == last.frame:  # the fan-out's next subscriber
            self._said_goodbye = self._said_goodbye or last.goodbye
            chunk = last.chunk
        else:
            body = self._events(frame)
            chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if self._shared:
                last.keep(frame, chunk, b"\nevent: disconnect\n" in chunk)
        if chunk:
            cycle.transport.write(chunk)
        return True

    async def write(self, frame: bytes) -> None:
        body = self._events(frame)
        if body:
            await self._body(body)

    def _events(self, frame: bytes) -> bytes:
        """The SSE events for one frame of queued lines (and the cursor they move)."""
        if b"\xe2\x80\xa8" in frame or b"\xe2\x80\xa9" in frame or b"\xc2\x85" in frame:
            frame = _escape_line_separators(frame)
        self._shared = True
        if b"\n" not in frame:  # one message: usually the bytes every subscriber shares
            return self._event(_line(frame))
        return b"".join([self._event(_line(line)) for line in frame.split(b"\n")])

    def _event(self, line: _Line) -> bytes:
        if line.event is not None:  # the same for every stream: built once
            if line.kind == b"disconnect":
                self._said_goodbye = True
            return line.event
        self._shared = False  # a cursor: this stream's own
        assert line.channel is not None and line.position is not None
        self.positions[line.channel] = line.position
        if line.kind == _POSITION_KIND:
            return b""
        cursor = encode_cursor(self.positions).encode()
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (cursor, line.kind, line.data)

    async def comment(self, text: str) -> None:
        await self._body(b": " + text.encode() + b"\n\n")

    async def _body(self, data: bytes) -> None:
        if not self._closed:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        reconnect = not 4000 <= code <= 4999
        data = codec.encode_disconnect_push(code, reason, reconnect)
        try:
            if not self._said_goodbye:
                await self._body(b"event: disconnect\ndata: %s\n\n" % data)
            self._closed = True
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:  # the peer is already gone
            self._closed = True


class SSEEndpoint:
    """ASGI app for ``/connection/sse``."""

    def __init__(self, node: Node, settings: HandshakeSettings) -> None:
        self.node = node
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        node = self.node
        try:
            channels, cursor, verdict = await self._check(scope)
        except ProtocolError as exc:
            await _send_error(send, exc)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        transport = SSETransport(send, scope.get(RAW_SEND))
        client = Client(node, transport, remote_addr=verdict.remote_addr)
        if not await client.accept(verdict.credentials):
            return
        hello = orjson.dumps({"client": client.id, "version": node.version})
        await transport._body(b"event: connected\ndata: %s\n\n" % hello)
        for channel in channels:
            await self._subscribe(client, channel, cursor.get(channel))
        await self._serve(client, transport, receive)

    async def _check(
        self, scope: dict[str, Any]
    ) -> tuple[list[str], dict[str, StreamPosition], Any]:
        query = parse_query(scope.get("query_string", b""))
        channels = channels_param(query)
        last_id = scope_headers(scope).get("last-event-id") or query.get("cursor", [""])[0]
        cursor = decode_cursor(last_id)
        verdict = await check_handshake(self.node, self.settings, scope, TRANSPORT)
        if verdict.error is not None:
            raise verdict.error
        refused = anonymous_refused(self.node, verdict)
        if refused is not None:
            raise refused
        for channel in channels:
            self.node.rules.check_subscribe(channel, verdict.credentials)
        return channels, cursor, verdict

    async def _subscribe(self, client: Client, channel: str, since: StreamPosition | None) -> None:
        try:
            sub = await self.node.subscribe_client(client, channel, since)
        except (ProtocolError, BrokerError) as exc:
            code = exc.code if isinstance(exc, ProtocolError) else ErrorCode.BROKER_UNAVAILABLE
            message = exc.message if isinstance(exc, ProtocolError) else "broker unavailable"
            error = {"push": "subscribe_error", "channel": channel, "code": code}
            client.enqueue(orjson.dumps({**error, "message": message}))
            return
        # No await from here on: live publications may be queued right after.
        if sub.position is not None:
            if sub.recovered is False:
                client.enqueue(_marker(_GAP, channel, sub.position))
            else:
                start = since if sub.recovered else sub.position
                assert start is not None
                client.enqueue(_marker(_POSITION, channel, start))
                for pub in sub.publications:
                    client.enqueue(codec.encode_publication_push(channel, pub, sub.position.epoch))
        for data in sub.followups:
            client.enqueue(data)

    async def _serve(self, client: Client, transport: SSETransport, receive: Any) -> None:
        interval = self.node.options.ping_interval
        while True:
            try:
                message = await asyncio.wait_for(receive(), interval)
            except TimeoutError:
                try:
                    await transport.comment("ping")
                except Exception:
                    client.transport_closed(1006)
                    return
                continue
            if message["type"] == "http.disconnect":
                client.transport_closed(1001)
                return


async def _send_error(send: Any, exc: ProtocolError) -> None:
    body = error_body(exc.code, exc.message)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": http_status(exc.code), "headers": headers})
    await send({"type": "http.response.body", "body": body})
