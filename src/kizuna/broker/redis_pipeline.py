"""Auto-pipelining of the Redis broker's publishes: one connection, one batch in flight.

Why
---
Through redis-py's client each publish took a connection from the pool, ran
under its own timeout (``asyncio.timeout`` → ``get_running_loop`` → a
``getpid`` syscall on CPython 3.11), waited for its reply and gave the
connection back; and the next publish of the same client waited for that
reply before it was even sent. At a few thousand publishes a second that was
most of a node's CPU, one write syscall and one round trip per publish. The
guide's Node.js server does not wait: ioredis pipelines commands. This module
does the same for the commands that publish.

Theory of operation
-------------------
1. :meth:`PublishPipeline.send` appends the command and a future to a queue
   *synchronously*: the moment a caller calls it, the command's place in
   Redis's order is fixed. Callers that call in order (one client's publishes,
   in command order) are applied in that order without waiting for each
   other's replies — per-channel order holds.
2. One writer task exists while the queue is not empty. It takes what is
   queued (at most :data:`MAX_BATCH`), writes it to its own connection in one
   write, reads the replies in order and resolves each future as its reply
   arrives. Meanwhile new commands accumulate: the batch grows with the load,
   so at high rates one syscall carries many publishes, and at low rates a
   publish costs one round trip, as before.
3. One batch at a time, on one connection: Redis runs one connection's
   commands in order, so when a reply arrives its command — and every command
   sent before it — has been applied. A client told "published" can read the
   publication back on any connection (read-your-writes), and a publication
   whose reply was not read is never reported as published.
4. Failures: when the connection fails or a batch is not answered within
   ``timeout`` (the broker's ``socket_timeout``; checked by one watchdog timer
   every ``timeout / 2``, so a batch fails after between 1 and 1.5 ``timeout``:
   a timeout of its own cost each batch a timer and a ``getpid`` syscall, about
   4 µs — per publish when publishes come one at a time), every command whose reply
   was not read fails with :class:`BrokerUnavailable` — it may or may not have
   been applied, exactly as with a reply lost before — and the connection is
   dropped; the next batch connects anew. Nothing is retried: a retried
   publish could publish twice (clients that care send an idempotency key).
   Such a refused command may even be applied after later ones, if Redis
   still reads it from the dropped connection: order is promised for what
   was reported published, and offsets tell subscribers the order applied.
   An error reply fails only its own command (translated as in
   redis_client.Calls); no redis-py exception leaves this module.
5. Scripts run with EVALSHA. The script is loaded (SCRIPT LOAD, in the same
   write) before the first batch on a connection that uses it, and again after
   a NOSCRIPT reply (SCRIPT FLUSH, or a failover to a server that never saw
   it); the publish that got NOSCRIPT fails with BrokerUnavailable rather than
   being retried behind publications that were sent after it.

Only standalone Redis uses it; Redis Cluster keeps redis-py's cluster client,
which routes each command to its slot's owner (see redis.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from kizuna.broker.redis_client import UNAVAILABLE
from kizuna.broker.redis_pubsub import hiredis_source
from kizuna.exceptions import BrokerError, BrokerUnavailable

try:  # hiredis (the redis extra) reads replies and packs commands in C
    from hiredis import pack_command
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    pack_command = None  # type: ignore[assignment]
    NOT_ENOUGH_DATA = None

__all__ = ["MAX_BATCH", "PublishPipeline"]

log = logging.getLogger("kizuna.broker.redis")

MAX_BATCH = 1000
"""Most commands written at once: bounds one batch's bytes and the work one timeout covers."""

_READ_SIZE = 65536
_EVALSHA = "EVALSHA"

Command = tuple[Any, ...]
Convert = Callable[[Any], Any]
"""Turns a command's reply into its future's result (send's ``convert``)."""


class PublishPipeline:
    """Sends commands on one connection of their own, pipelined, replies in order."""

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        timeout: float,
        script: tuple[str, str] | None = None,
    ) -> None:
        """``connect`` makes an unconnected connection; ``script`` is (sha, body) for EVALSHA."""
        self._connect = connect
        self._timeout = timeout or None
        self._script = script
        self._queue: list[tuple[Command, asyncio.Future[Any], Convert | None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None
        self._script_loaded = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._in_flight_since: float | None = None
        """When the batch being exchanged started (loop time); None between batches."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._timed_out = False
        """The watchdog cancelled the writer: its CancelledError means "timed out"."""

    def send(self, *command: Any, convert: Convert | None = None) -> asyncio.Future[Any]:
        """Queue ``command``; the future gets its reply (``convert(reply)`` if given), or a
        BrokerError.

        Synchronous on purpose (module doc, 1): the order of calls is the order
        in which Redis applies the commands. ``convert`` lets a caller hand the
        future on without wrapping it in a coroutine of its own.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(BrokerUnavailable("redis broker is closed"))
            return future
        self._queue.append((command, future, convert))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
            if self._watchdog is None and self._timeout is not None:
                self._watchdog = loop.call_later(self._timeout / 2, self._watch)
        return future

    def send_script(
        self, keys: list[str], args: list[Any], *, convert: Convert | None = None
    ) -> asyncio.Future[Any]:
        """Queue an EVALSHA of this pipeline's script."""
        assert self._script is not None
        return self.send(_EVALSHA, self._script[0], len(keys), *keys, *args, convert=convert)

    async def close(self) -> None:
        """Fail what is queued, stop the writer, drop the connection."""
        self._closed = True
        self._timed_out = False  # a cancel from here on is close's own
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._fail(self._queue, BrokerUnavailable("redis broker is closed"))
        self._queue = []
        self._drop()

    # --- the writer ----------------------------------------------------------------------

    def _watch(self) -> None:
        """Every ``timeout / 2`` while a writer runs: cancel a batch that has waited too long."""
        self._watchdog = None
        writer, since, loop = self._writer, self._in_flight_since, self._loop
        if writer is None or loop is None or self._timeout is None:
            return  # idle: the next send starts the watchdog again
        if since is not None and loop.time() - since > self._timeout and not self._timed_out:
            self._timed_out = True
            writer.cancel()
        self._watchdog = loop.call_later(self._timeout / 2, self._watch)

    async def _write(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                await self._exchange(batch)
        finally:
            self._writer = None

    async def _exchange(
        self, batch: list[tuple[Command, asyncio.Future[Any], Convert | None]]
    ) -> None:
        """Write ``batch``, resolve each future from its reply (module doc, 2 and 4)."""
        answered = 0
        assert self._loop is not None
        self._in_flight_since = self._loop.time()
        try:
            # No timeout here: the watchdog (_watch) bounds the exchange.
            conn = self._conn
            if conn is None or not _usable(conn):
                conn = await self._reconnect()
            commands = [command for command, _, _ in batch]
            load = self._script is not None and not self._script_loaded
            load = load and any(command[0] is _EVALSHA for command in commands)
            if load:
                assert self._script is not None
                commands.insert(0, ("SCRIPT", "LOAD", self._script[1]))
            drain = self._send(conn, _pack(conn, commands))
            if drain is not None:
                await drain
            replies = _Replies(conn)
            if load:
                reply = await replies.next()
                if isinstance(reply, Exception):
                    raise reply
                self._script_loaded = True
            for _, future, convert in batch:
                reply = replies.ready()
                if reply is NOT_ENOUGH_DATA:
                    reply = await replies.next()
                answered += 1
                if future.done():  # the caller gave up waiting; the command ran anyway
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(self._failure(reply))
                elif convert is None:
                    future.set_result(reply)
                else:
                    _resolve(future, convert, reply)
        except BaseException as exc:
            self._drop()
            timed_out = self._timed_out and isinstance(exc, asyncio.CancelledError)
            if timed_out:
                self._timed_out = False
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # the watchdog's cancel, not the caller's: carry on
                error: BrokerError = BrokerUnavailable(
                    f"redis did not answer within {self._timeout} s"
                )
            elif isinstance(exc, (*UNAVAILABLE, asyncio.CancelledError)):
                error = BrokerUnavailable(f"redis unavailable: {exc!r}")
            else:
                if not isinstance(exc, RedisError):
                    log.exception("redis: publishing a batch failed")
                error = BrokerError(f"redis error: {exc!r}")
            error.__cause__ = exc
            self._fail(batch[answered:], error)
            if isinstance(exc, asyncio.CancelledError) and not timed_out:
                raise
        finally:
            self._in_flight_since = None

    async def _reconnect(self) -> AbstractConnection:
        """A new connection: there was none, or it was closed meanwhile."""
        self._drop()
        conn = self._connect()
        self._conn = conn
        self._script_loaded = False
        await conn.connect()  # type: ignore[no-untyped-call]
        return conn

    @staticmethod
    def _send(conn: AbstractConnection, chunks: list[bytes]) -> Awaitable[None] | None:
        """One write of every chunk (redis-py's send wraps each write in a task with a timeout).

        Returns what to await before reading the replies: the stream's ``drain`` only when
        the transport holds a backlog (a coroutine and a check of the socket otherwise).
        """
        writer = getattr(conn, "_writer", None)
        if not isinstance(writer, asyncio.StreamWriter):  # pragma: no cover - redis-py changed
            return conn.send_packed_command(chunks, check_health=False)
        writer.writelines(chunks)
        transport = writer.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return writer.drain()
        return None

    def _failure(self, reply: Exception) -> BrokerError:
        error: BrokerError
        if isinstance(reply, NoScriptError):
            self._script_loaded = False  # load it again before the next script call
            error = BrokerUnavailable(f"redis lost the publish script: {reply}")
        elif isinstance(reply, UNAVAILABLE):
            error = BrokerUnavailable(f"redis unavailable: {reply}")
        else:
            error = BrokerError(f"redis error: {reply}")
        error.__cause__ = reply
        return error

    @staticmethod
    def _fail(
        items: list[tuple[Command, asyncio.Future[Any], Convert | None]], error: BrokerError
    ) -> None:
        for _, future, _ in items:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a caller that gave up must not log it

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                conn._close()  # type: ignore[no-untyped-call]


def _resolve(future: asyncio.Future[Any], convert: Convert, reply: Any) -> None:
    """The converted reply; a reply it cannot convert is a BrokerError, not a crash."""
    try:
        future.set_result(convert(reply))
    except Exception as exc:
        error = BrokerError(f"redis: unexpected reply {reply!r}")
        error.__cause__ = exc
        future.set_exception(error)


def _pack(conn: AbstractConnection, commands: list[Command]) -> list[bytes]:
    """The commands in RESP: hiredis packs one in about 1 µs, redis-py's encoder in 14.

    Arguments are str, bytes or int only (what the broker sends), which both encode alike.
    """
    if pack_command is None:  # pragma: no cover - hiredis is part of the redis extra
        return conn.pack_commands(commands)
    return [pack_command(command) for command in commands]


def _usable(conn: AbstractConnection) -> bool:
    """Connected, and not closed by the server while idle (it restarted, or timed us out)."""
    if not conn.is_connected:
        return False
    reader = getattr(conn, "_reader", None)
    return not (isinstance(reader, asyncio.StreamReader) and reader.at_eof())


class _Replies:
    """Reads one connection's replies in order: over hiredis directly when it can.

    As in redis_pubsub.Subscriber._drain, reading hiredis directly spares
    ``read_response``'s frames and timeout per reply. Error replies come back
    as exception objects (redis-py's reader builds them), not raised.
    """

    __slots__ = ("_conn", "_reader", "_stream")

    def __init__(self, conn: AbstractConnection) -> None:
        self._conn = conn
        source = hiredis_source(conn)
        self._reader: Any = None
        self._stream: asyncio.StreamReader | None = None
        if source is not None:
            self._reader, self._stream = source

    def ready(self) -> Any:
        """The next reply if it is already read, else ``NOT_ENOUGH_DATA`` (then: :meth:`next`)."""
        reader = self._reader
        if reader is None or self._stream is None:
            return NOT_ENOUGH_DATA
        return reader.gets()

    async def next(self) -> Any:
        reader = self._reader
        if reader is None or self._stream is None:
            try:
                return await self._conn.read_response()
            except ResponseError as exc:
                return exc
        reply = reader.gets()
        while reply is NOT_ENOUGH_DATA:
            data = await self._stream.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError("redis closed the publish connection")
            reader.feed(data)
            reply = reader.gets()
        return reply
