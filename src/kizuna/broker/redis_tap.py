"""Replies of a redis-py connection handed over in the transport's callback, not a stream.

Why
---
redis-py reads through asyncio's ``StreamReader``: each chunk the transport
delivers is appended to the stream's buffer and wakes the task waiting on it —
a future, a loop turn and a task step before the bytes reach the parser. A
node on Redis reads twice per publish at a few thousand publishes a second
(the publish's reply, the message coming back through Pub/Sub), each chunk
holding one reply. :func:`tap` puts a protocol of ours in front of redis-py's
on the same transport: the transport hands each chunk to hiredis and every
complete reply to a callback in the same call.

What stays redis-py's
---------------------
The connection is made, authenticated and (for TLS) wrapped by redis-py, and
it still writes: the tap passes everything but the incoming bytes — pause and
resume of writing, the end of the connection — on to redis-py's own protocol,
so ``send_command``, ``drain`` and ``disconnect`` keep working. Nothing may
read the connection through redis-py after the tap (its stream gets no more
bytes). The hiredis reader is the one redis-py set up (error replies come
back as its exception objects, ``NoScriptError`` and all); a connection that
does not read through hiredis (no hiredis, or redis-py's pinned internals
moved) is read by a task through redis-py instead, with the same callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

try:  # the tap needs hiredis and knows redis-py's (pinned) parser internals
    import hiredis
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    hiredis = None  # type: ignore[assignment]
    NOT_ENOUGH_DATA = None

__all__ = ["hiredis_source", "tap"]

OnReply = Callable[[Any], None]
"""Called with each complete reply, in order; an error reply is an exception object."""


def hiredis_source(conn: AbstractConnection) -> tuple[Any, asyncio.StreamReader] | None:
    """The hiredis reader and byte stream behind ``conn``, if it reads through hiredis."""
    if hiredis is None:
        return None
    reader = getattr(conn._get_parser(), "_reader", None)
    stream = getattr(conn, "_reader", None)
    if isinstance(reader, hiredis.Reader) and isinstance(stream, asyncio.StreamReader):
        return reader, stream
    return None


async def tap(conn: AbstractConnection, on_reply: OnReply) -> asyncio.Future[None]:
    """From now on, hand every reply ``conn`` receives to ``on_reply`` as it is read.

    Returns a future that finishes when the connection ends: with None at the
    server's EOF, or with the error that ended it — a lost connection, a reply
    that cannot be parsed, or an exception ``on_reply`` raised (the connection
    is then closed: its replies can no longer be attributed). A connection that
    cannot be tapped (module doc) is read the portable way, by a task calling
    redis-py's ``read_response``: the same replies, at a task wake each.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    source = hiredis_source(conn)
    writer = getattr(conn, "_writer", None)
    if source is None or not isinstance(writer, asyncio.StreamWriter):
        reading = loop.create_task(_read_portably(conn, on_reply, ended))
        _READERS.add(reading)
        reading.add_done_callback(_READERS.discard)
        return ended
    reader, stream = source
    transport = writer.transport
    protocol = _Tap(transport.get_protocol(), transport, reader, on_reply, ended)
    transport.set_protocol(protocol)
    # What redis-py's stream took in before the handover, then the end of that stream:
    # nothing reads it from now on. read() does not wait here (the EOF is fed), so no
    # chunk can come in between and overtake these bytes.
    stream.feed_eof()
    protocol.data_received(await stream.read())  # also what hiredis already holds
    return ended


_READERS: set[asyncio.Task[None]] = set()
"""The portable readers running (the loop keeps only weak references to tasks)."""


async def _read_portably(
    conn: AbstractConnection, on_reply: OnReply, ended: asyncio.Future[None]
) -> None:
    try:
        while True:
            try:
                reply = await conn.read_response(timeout=math.inf)
            except ResponseError as exc:
                reply = exc  # as hiredis hands error replies over: an object, not raised
            on_reply(reply)
    except Exception as exc:
        _end(ended, exc)
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)


def _end(ended: asyncio.Future[None], exc: BaseException | None) -> None:
    if ended.done():
        return
    if exc is None:
        ended.set_result(None)
    else:
        ended.set_exception(exc)
        ended.exception()  # retrieved: an owner that already left must not log it


class _Tap(asyncio.Protocol):
    """Feeds hiredis and calls back per reply; passes everything else to redis-py's protocol."""

    def __init__(
        self,
        previous: asyncio.BaseProtocol,
        transport: asyncio.WriteTransport,
        reader: Any,
        on_reply: OnReply,
        ended: asyncio.Future[None],
    ) -> None:
        self._previous = previous
        self._transport = transport
        self._feed = reader.feed
        self._gets = reader.gets
        self._on_reply = on_reply
        self._ended = ended

    def data_received(self, data: bytes) -> None:
        if self._ended.done():
            return  # ended (a reply could not be handled): the rest is not attributable
        try:
            self._feed(data)
            gets, on_reply = self._gets, self._on_reply
            reply = gets()
            while reply is not NOT_ENOUGH_DATA:
                on_reply(reply)
                reply = gets()
        except Exception as exc:
            self._end(exc)
            self._transport.abort()

    def eof_received(self) -> bool:
        self._end(None)
        return False  # close the transport: redis-py's protocol then hears connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)
        self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()

    def _end(self, exc: Exception | None) -> None:
        _end(self._ended, exc)
