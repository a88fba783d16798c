"""uvicorn's WebSocket protocol, able to let go of ASGI once a connection is accepted.

Why: under ASGI, every open WebSocket keeps an application task alive for its whole
life — the task, its chain of coroutine frames, an ``asyncio.Queue`` of receive
events, and the handshake's scope, request and response with all their headers.
For an idle connection that is about half of its memory. The native endpoint needs
none of it after the 101: frames can go straight from the protocol to the client.

:meth:`DetachableWebSocketProtocol.detach` swaps uvicorn's receive queue for an
:class:`Inbox` — uvicorn hands every receive and disconnect event to
``queue.put_nowait``, so that one seam carries them all — and lets the ASGI task
end without closing the connection. Framing, keepalive pings, the close handshake
and backpressure stay uvicorn's (and the ``websockets`` library's). Paths that are
not detached (Socket.IO's WebSocket transport) run on ASGI as before.

uvicorn and websockets are pinned (pyproject.toml): this leans on the attributes
of uvicorn's ``websockets-sansio`` protocol, and the WebSocket tests cover each
path it changes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_path_with_query_string,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.protocol import Protocol as FrameProtocol
from websockets.protocol import State

from kizuna.core.deadlines import Deadlines

__all__ = [
    "INBOX_FRAMES",
    "DetachableWebSocketProtocol",
    "FrameHandler",
    "Inbox",
    "RefusedHandshake",
    "WritableFlag",
    "handshake_request",
]

INBOX_FRAMES = 64
"""Frames a detached connection reads ahead of its handler before reading pauses.

uvicorn pauses reading after every frame and resumes when the app takes it: two
event-loop watcher changes (with uvloop, a syscall each) per burst of commands. A
publisher sends bursts, so reading ahead by a bounded number of frames saves them;
the bound (plus the frames of the one read that crosses it) caps the memory a
flooding client can take, as the ``websockets`` library's own ``max_queue`` does.
"""


# websockets.http11's rules for a header line (RFC 9110: a token, then a field value
# without control characters).
_HEADER_NAME = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")
_HEADER_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_REQUEST_LINE_EXTRA = len("  HTTP/1.1\r\n")  # around the method and the target


@dataclass(frozen=True, slots=True)
class RefusedHandshake:
    """An upgrade request the ``websockets`` library would not parse: the HTTP answer."""

    status: int
    reason: str


def handshake_request(
    method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> Request | RefusedHandshake:
    """An upgrade request httptools has parsed, as the ``websockets`` library's Request.

    uvicorn writes the request it has parsed back into bytes and hands them to the
    WebSocket protocol, where ``websockets`` parses them again: about 6 % of a
    connect's CPU. This builds the Request directly, under the rules of
    ``websockets.http11.Request.parse`` (an ASCII target, its line-length and
    header-count limits, valid names and values, no body). A request those rules
    refuse gets its HTTP status here: through uvicorn's way, ``websockets`` refused
    it without an answer, and the socket stayed open until the peer left — and
    then failed the server's shutdown (tests/transports/test_upgrade.py).
    """
    if not target.isascii():
        return RefusedHandshake(400, "the request target is not ASCII")
    if len(target) + len(method) + _REQUEST_LINE_EXTRA > MAX_LINE_LENGTH:
        return RefusedHandshake(414, "the request line is too long")
    if len(headers) > MAX_NUM_HEADERS:
        return RefusedHandshake(431, f"more than {MAX_NUM_HEADERS} headers")
    parsed = Headers()
    for name, value in headers:
        if len(name) + len(value) + 4 > MAX_LINE_LENGTH:
            return RefusedHandshake(431, "a header line is too long")
        if _HEADER_NAME.fullmatch(name) is None or _HEADER_VALUE.fullmatch(value) is None:
            return RefusedHandshake(400, "invalid header")
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return RefusedHandshake(400, "a WebSocket handshake has no body")
        parsed.set_insecure(name.decode("ascii"), value.strip(b" \t").decode("iso-8859-1"))
    # The method is websockets' to refuse (405), as it was through uvicorn's way.
    return Request(target.decode("ascii"), parsed, method=method)


class FrameHandler(Protocol):
    """What a detached connection's frames and end are handed to (a kizuna Client)."""

    async def handle_frame(self, frame: bytes | str) -> None: ...

    def handle_frame_nowait(self, frame: bytes | str) -> Coroutine[Any, Any, None] | None:
        """Handle what can be without waiting; the rest of the frame as a coroutine."""

    def transport_closed(self, code: int) -> None: ...


class Inbox:
    """Stands in for uvicorn's receive queue on a detached connection.

    Frames are handled one at a time, in order. A frame with nothing ahead of it
    is handled in the call that delivers it, as far as it goes without waiting
    (``handle_frame_nowait``: a busy connection's publishes); a task exists only
    while something has to wait, and later frames queue behind it. Reading stops
    while :data:`INBOX_FRAMES` frames wait (uvicorn under ASGI stops after every
    frame) and resumes once the inbox
    has caught up, so a flood of commands is held back in the kernel, not in
    memory. A disconnect waits behind frames that arrived before it, as it would
    in the ASGI receive loop.
    """

    __slots__ = ("_closed_code", "_handler", "_pending", "_protocol", "_task")

    def __init__(self, protocol: DetachableWebSocketProtocol, handler: FrameHandler) -> None:
        self._protocol = protocol
        self._handler = handler
        self._pending: list[bytes | str] = []
        self._task: asyncio.Task[None] | None = None
        self._closed_code: int | None = None

    def put_nowait(self, message: dict[str, Any]) -> None:
        """uvicorn's ``queue.put_nowait``: a received message, or the disconnect."""
        if self._closed_code is not None:
            return  # the end has been handed over; nothing comes after it
        kind = message["type"]
        if kind == "websocket.receive":
            data = message.get("text")
            self.receive(data if data is not None else message.get("bytes") or b"")
        elif kind == "websocket.disconnect":
            self._closed_code = int(message.get("code", 1006))
            if self._task is None:
                self._end(self._closed_code)

    def receive(self, frame: bytes | str) -> None:
        """One whole message, in order after the ones before it."""
        if self._closed_code is not None:
            return
        if self._task is not None:
            self._pending.append(frame)
            return
        # Nothing ahead of this frame: handle it now, and start a task only for a
        # command that has to wait (most frames of a busy connection do not).
        try:
            rest = self._handler.handle_frame_nowait(frame)
        except Exception:
            self._failed()
            self._end(1011)
            return
        if rest is not None:
            self._task = self._protocol.loop.create_task(self._drain(rest))

    def empty(self) -> bool:
        return not self._pending

    def has_room(self) -> bool:
        return len(self._pending) < INBOX_FRAMES

    async def _drain(self, first: Coroutine[Any, Any, None]) -> None:
        try:
            await first
            while self._pending:
                await self._handler.handle_frame(self._pending.pop(0))
        except Exception:
            self._failed()
        finally:
            self._task = None
            self._pending.clear()
            if self._closed_code is not None:
                self._end(self._closed_code)
            else:
                self._protocol.resume_after_frames()

    def _failed(self) -> None:
        """A bug, not bad input (the client answers that with codes): as uvicorn does when
        an ASGI app raises, log it and drop this connection; the others go on."""
        self._protocol.logger.exception("Exception handling a WebSocket frame")
        self._closed_code = 1011
        self._protocol.transport.close()

    def _end(self, code: int) -> None:
        """Hand the end to the handler, and let go of it and of the protocol.

        The protocol, this inbox and the handler (whose transport holds the protocol)
        point at one another; cut here, a closed connection is freed by reference
        counting at once instead of by a later full cyclic-GC pass — which, with
        thousands of connections open, takes a hundred milliseconds or more
        (docs/decisions/0006-no-cycles-per-connection.md).
        """
        handler = self._handler
        del self._handler, self._protocol
        handler.transport_closed(code)


class WritableFlag:
    """The ``asyncio.Event`` uvicorn keeps per connection for "the socket has room".

    Same methods, but the list of waiters is made only when someone waits — which
    happens only to a slow peer — instead of a deque up front (≈ 0.7 KB each).
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class _PongDeadline:
    """Stands where uvicorn keeps its pong TimerHandle: the deadline is on the node's timer.

    uvicorn's ``handle_pong`` cancels the pong timer and schedules the next ping only
    if there is one, so something with ``cancel()`` must be there while a ping is out.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: DetachableWebSocketProtocol) -> None:
        self._protocol = protocol

    def cancel(self) -> None:
        self._protocol._drop_beat()


class DetachableWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with :meth:`detach`."""

    inbox: Inbox | None = None
    """Set by :meth:`detach`: where this connection's frames go from then on."""
    _deadlines: Deadlines | None = None
    """Set by :meth:`detach`: the node's timer, which then keeps this connection's keepalive."""
    _beat: int | None = None
    """The slot of the keepalive's next step (a ping, or a pong's deadline) in ``_deadlines``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable = WritableFlag()  # type: ignore[assignment]

    def take_over(
        self,
        transport: asyncio.Transport,
        request: Request,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        secure: bool,
    ) -> None:
        """Take the socket and its handshake from uvicorn's HTTP protocol, as parsed there.

        What ``connection_made`` and then ``data_received`` with the request's bytes
        do, minus what the HTTP protocol already did: looking up the socket's
        addresses, and parsing the request (:func:`handshake_request`).
        ``websockets``' parser moves past the request to frames, and uvicorn's
        ``handle_connect`` answers it (the ASGI app then accepts or denies).
        """
        self.connections.add(self)
        self.transport = transport
        self.server, self.client = server, client
        self.scheme = "wss" if secure else "ws"
        conn = self.conn
        conn.parser = FrameProtocol.parse(conn)
        next(conn.parser)
        self.handle_connect(request)

    def accept_now(self, deadlines: Deadlines | None = None) -> bool:
        """Answer the handshake with 101 now: ASGI's ``websocket.accept``, without ASGI.

        uvicorn's accept, minus what costs here for nothing: the coroutine, the
        access-log arguments formatted for a line that is off below INFO, and — with
        ``deadlines`` (the node's timer, for a connection about to :meth:`detach`) —
        a keepalive timer of its own started only to be moved there a moment later.
        False when the peer has gone or the handshake is answered already; nothing
        is sent then.
        """
        if (
            self.disconnected
            or self.handshake_complete
            or self.initial_response is not None
            or self.transport.is_closing()
        ):
            return False
        if self.logger.isEnabledFor(logging.INFO):
            client, path = get_client_addr(self.scope), get_path_with_query_string(self.scope)
            self.logger.info('%s - "WebSocket %s" [accepted]', client, path)
        headers = self.response.headers
        del headers["Date"]  # websockets' own; uvicorn's default headers bring theirs
        headers.update((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.default_headers)
        self.handshake_complete = True
        self.conn.send_response(self.response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self._deadlines = deadlines
        self.start_keepalive()
        return True

    def detach(self, handler: FrameHandler, deadlines: Deadlines | None = None) -> None:
        """From now on, hand frames and the end of the connection to ``handler``.

        Call it right after the accept (:meth:`accept_now`, or ASGI's
        ``websocket.accept``) and then return from the ASGI app: the task ends, the
        connection stays open. With ``deadlines`` (the node's), keepalive pings that
        run on a timer of their own move to the node's timer (after accept_now they
        are there already).
        """
        queued = self.queue
        inbox = Inbox(self, handler)
        self.queue = self.inbox = inbox  # type: ignore[assignment]
        while not queued.empty():  # nothing in practice: accept and detach share a turn
            inbox.put_nowait(dict(queued.get_nowait()))
        # The handshake is over; its request, response and scope only held memory.
        self.request = self.response = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]
        self._restart_frame_parser()
        if deadlines is not None and self.ping_timer is not None and self.pong_timer is None:
            # A timer per connection holds ~650 bytes and four GC-tracked objects for the
            # connection's life (core/deadlines.py); the node's timer holds a set entry.
            self.ping_timer.cancel()
            self.ping_timer = None
            self._deadlines = deadlines
            self.schedule_ping()

    # --- keepalive on the node's timer ---------------------------------------------------
    # uvicorn's ping/pong logic is kept as it is (payload check, RTT, the 1011 close);
    # only where its two timers live changes, once detached.

    def schedule_ping(self) -> None:
        if self._deadlines is None:
            super().schedule_ping()
            return
        assert self.ping_interval is not None
        self._drop_beat()
        self._beat = self._deadlines.add(self, max(0.0, self.ping_interval - self.last_ping_rtt))

    def send_keepalive_ping(self) -> None:
        super().send_keepalive_ping()
        pong_timer = self.pong_timer  # uvloop's TimerHandle is no asyncio.TimerHandle
        if (
            self._deadlines is not None
            and pong_timer is not None
            and not isinstance(pong_timer, _PongDeadline)
        ):
            pong_timer.cancel()
            assert self.ping_timeout is not None
            self._drop_beat()
            self._beat = self._deadlines.add(self, self.ping_timeout)
            self.pong_timer = _PongDeadline(self)  # type: ignore[assignment]

    def deadline_passed(self) -> None:
        """The node's timer: time for the next ping, or the pong is overdue."""
        self._beat = None
        if self.pending_ping_payload is None:
            self.send_keepalive_ping()
        else:
            self.keepalive_timeout()

    def stop_keepalive(self) -> None:
        super().stop_keepalive()
        self._drop_beat()

    def _drop_beat(self) -> None:
        if self._beat is not None and self._deadlines is not None:
            self._deadlines.discard(self, self._beat)
        self._beat = None

    def _restart_frame_parser(self) -> None:
        """Let go of the handshake request that websockets' parser keeps (≈ 2 KB).

        ``ServerProtocol.parse`` reads the request into a local variable and then
        runs ``Protocol.parse`` (frames) inside the same generator, so the request
        and all its headers live as long as the connection. With nothing buffered,
        that generator is at a frame boundary waiting for a frame's first bytes —
        exactly where a fresh ``Protocol.parse`` starts — so swapping it in changes
        nothing but the memory. With bytes buffered (a client that sent frames
        before seeing the 101) the parser stays as it is.
        """
        conn = self.conn
        if conn.state is State.OPEN and not conn.reader.buffer and conn.parser_exc is None:
            conn.parser = FrameProtocol.parse(conn)
            next(conn.parser)

    def handle_text(self, event: Frame) -> None:
        """A whole text message goes straight to the inbox while it has room.

        uvicorn's own path builds an ASGI message dict for the inbox to take apart
        and pauses reading after every message (send_receive_event_to_app); for the
        common case — one unfragmented frame, reading on, not closing — this is the
        same, minus those. Fragments, a full inbox, a closing connection and
        invalid UTF-8 (uvicorn answers 1007) take uvicorn's path.
        """
        inbox = self.inbox
        whole = event.fin and not self.frames
        if (
            inbox is None
            or not whole
            or self.read_paused
            or self.close_sent
            or not inbox.has_room()
        ):
            super().handle_text(event)
            return
        try:
            text = bytes(event.data).decode()
        except UnicodeDecodeError:
            super().handle_text(event)
            return
        inbox.receive(text)

    def send_receive_event_to_app(self) -> None:
        inbox = self.inbox
        if inbox is None or self.read_paused or not inbox.has_room():
            super().send_receive_event_to_app()
            return
        # uvicorn pauses reading after queueing the frame unless it is paused already;
        # the inbox has room, so let it believe that for this one frame.
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = False

    def resume_after_frames(self) -> None:
        """The inbox has caught up: read again (uvicorn's ``receive()`` does this under ASGI)."""
        if self.read_paused:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def detached(self) -> bool:
        return self.inbox is not None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.detached:
            # websockets' parser is a generator whose frame holds the protocol object
            # that holds it; nothing is parsed after the socket is gone, so end it.
            self.conn.parser.close()

    async def run_asgi(self) -> None:
        # uvicorn's run_asgi, except that a detached connection outlives its app.
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            # A denial response (403, 401) answers the handshake too; uvicorn 0.54 logs an
            # error for each one as if the app had returned without answering.
            if not self.handshake_complete and self.initial_response is None:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.detached:
            self.transport.close()
