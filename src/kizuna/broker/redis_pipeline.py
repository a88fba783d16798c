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
2. At the end of the loop turn (one ``call_soon`` for however many sends) what
   is queued is written to the pipeline's own connection in one write, and
   moves to the in-flight line. Replies are read in the transport's callback
   (redis_tap.py): each resolves the future at the head of the line — no task
   per batch, no task wake per read. At high rates one write carries many
   publishes; at low rates a publish costs one round trip, as before. At most
   :data:`MAX_IN_FLIGHT` commands wait for their replies; the rest stay queued
   until replies make room, so a slow Redis is not buried in writes.
3. One connection: Redis runs one connection's commands in order, so when a
   reply arrives its command — and every command sent before it — has been
   applied. A client told "published" can read the publication back on any
   connection (read-your-writes), and a publication whose reply was not read is
   never reported as published.
4. Failures: when the connection ends (Redis stopped, network cut), or Redis
   answers nothing for ``timeout`` while commands wait (the broker's
   ``socket_timeout``; checked by one watchdog timer every ``timeout / 2``, so
   this is noticed after between 1 and 1.5 ``timeout``: a timeout of its own cost
   each batch a timer and a ``getpid`` syscall), every command in flight fails
   with :class:`BrokerUnavailable` — it may or may not have been applied,
   exactly as with a reply lost before — and the connection is dropped; what is
   still queued goes to a new connection. A failed connect fails what waited for
   it. Nothing is retried: a retried publish could publish twice (clients that
   care send an idempotency key). Such a refused command may even be applied
   after later ones, if Redis still reads it from the dropped connection: order
   is promised for what was reported published, and offsets tell subscribers
   the order applied. An error reply fails only its own command (translated as
   in redis_client.Calls); no redis-py exception leaves this module.
5. Scripts run with EVALSHA. The script is loaded (SCRIPT LOAD, in the same
   write) before the first EVALSHA on a connection, and again after a NOSCRIPT
   reply (SCRIPT FLUSH, or a failover to a server that never saw it); the
   publish that got NOSCRIPT fails with BrokerUnavailable rather than being
   retried behind publications that were sent after it.

Only standalone Redis uses it; Redis Cluster keeps redis-py's cluster client,
which routes each command to its slot's owner (see redis.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from kizuna.broker.redis_client import UNAVAILABLE, open_connection
from kizuna.broker.redis_tap import tap
from kizuna.exceptions import BrokerError, BrokerUnavailable

try:  # hiredis (the redis extra) packs commands in C
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    pack_command = None  # type: ignore[assignment]

__all__ = ["MAX_IN_FLIGHT", "PublishPipeline"]

log = logging.getLogger("kizuna.broker.redis")

MAX_IN_FLIGHT = 1000
"""Most commands waiting for their replies: bounds what one timeout fails and what one
connection's write buffer holds."""

_EVALSHA = "EVALSHA"

Command = tuple[Any, ...]
Convert = Callable[[Any], Any]
"""Turns a command's reply into its future's result (send's ``convert``)."""
Waiting = tuple[asyncio.Future[Any] | None, Convert | None]
"""A command in flight: its future (None: the pipeline's own SCRIPT LOAD) and converter."""


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
        """Sent, not yet written, in order."""
        self._in_flight: deque[Waiting] = deque()
        """Written, waiting for their replies, in order (module doc, 2)."""
        self._conn: AbstractConnection | None = None
        self._ended: asyncio.Future[None] | None = None
        """Finishes when the connection ends (redis_tap.tap)."""
        self._connecting: asyncio.Task[None] | None = None
        self._write_pending = False
        self._script_loaded = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._answered_at = 0.0
        """When Redis last answered, or the line last went from empty to waiting (loop time)."""
        self._watchdog: asyncio.TimerHandle | None = None

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
        if not self._write_pending:
            self._write_pending = True
            loop.call_soon(self._write)
        return future

    def send_script(
        self, keys: list[str], args: list[Any], *, convert: Convert | None = None
    ) -> asyncio.Future[Any]:
        """Queue an EVALSHA of this pipeline's script."""
        assert self._script is not None
        return self.send(_EVALSHA, self._script[0], len(keys), *keys, *args, convert=convert)

    async def close(self) -> None:
        """Fail what is queued and in flight, stop connecting, drop the connection."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        closed = BrokerUnavailable("redis broker is closed")
        self._fail_in_flight(closed)
        self._fail(self._queue, closed)
        self._queue = []
        self._drop()

    # --- writing -------------------------------------------------------------------------

    def _write(self) -> None:
        """Write what is queued, as far as the in-flight line has room (module doc, 2)."""
        self._write_pending = False
        if not self._queue or self._closed:
            return
        conn = self._conn
        if conn is None or self._ended is None or self._ended.done():
            if self._connecting is None:
                assert self._loop is not None
                self._connecting = self._loop.create_task(self._reconnect())
            return
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return  # the replies that make room write the rest (_on_reply)
        batch = self._queue[:room]
        del self._queue[:room]
        commands = [command for command, _, _ in batch]
        in_flight = self._in_flight
        if not in_flight:
            assert self._loop is not None
            self._answered_at = self._loop.time()
            self._watch_soon()
        script = self._script
        if script is not None and not self._script_loaded and _uses_script(commands):
            commands.insert(0, ("SCRIPT", "LOAD", script[1]))
            in_flight.append((None, None))
            self._script_loaded = True  # a failed load shows as NOSCRIPT: loaded again
        in_flight.extend((future, convert) for _, future, convert in batch)
        try:
            _send(conn, _pack(conn, commands))
        except Exception as exc:  # the transport is gone: what was written is in flight
            self._lost(BrokerUnavailable(f"redis unavailable: {exc!r}"))

    async def _reconnect(self) -> None:
        """A new connection for what is queued: there was none, or it ended."""
        self._drop()
        # Normally failed already (_on_end); replies to these cannot come on a new connection.
        self._fail_in_flight(BrokerUnavailable("redis unavailable: the connection ended"))
        conn = self._connect()
        self._script_loaded = False
        try:
            async with asyncio.timeout(self._timeout):
                await open_connection(conn)
            ended = await tap(conn, self._on_reply)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            error = BrokerUnavailable(f"redis unavailable: {exc!r}")
            error.__cause__ = exc
            queued, self._queue = self._queue, []
            self._fail(queued, error)
            return
        finally:
            self._connecting = None
        self._conn, self._ended = conn, ended
        ended.add_done_callback(self._on_end)
        self._write()

    # --- replies -------------------------------------------------------------------------

    def _on_reply(self, reply: Any) -> None:
        """One reply, in the transport's callback: it answers the head of the line."""
        future, convert = self._in_flight.popleft()
        assert self._loop is not None
        self._answered_at = self._loop.time()
        if future is None:  # SCRIPT LOAD
            if isinstance(reply, Exception):
                log.warning("redis: loading the publish script failed: %s", reply)
        elif not future.done():  # done: the caller gave up; the command ran anyway
            if isinstance(reply, Exception):
                future.set_exception(self._failure(reply))
            elif convert is None:
                future.set_result(reply)
            else:
                _resolve(future, convert, reply)
        if self._queue and not self._write_pending and len(self._in_flight) < MAX_IN_FLIGHT:
            self._write_pending = True
            self._loop.call_soon(self._write)

    def _on_end(self, ended: asyncio.Future[None]) -> None:
        """The connection ended: what waits for a reply will not get one (module doc, 4)."""
        if ended is not self._ended:
            return  # an earlier connection's end, already handled
        exc = None if ended.cancelled() else ended.exception()
        self._lost(BrokerUnavailable(f"redis unavailable: {exc or 'connection closed'!r}"))

    def _lost(self, error: BrokerError) -> None:
        self._drop()
        self._fail_in_flight(error)
        if self._queue and not self._closed and not self._write_pending:
            self._write_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._write)

    def _watch_soon(self) -> None:
        if self._watchdog is None and self._timeout is not None and self._loop is not None:
            self._watchdog = self._loop.call_later(self._timeout / 2, self._watch)

    def _watch(self) -> None:
        """Every ``timeout / 2`` while commands wait: drop a connection that stopped answering."""
        self._watchdog = None
        if not self._in_flight or self._loop is None or self._timeout is None:
            return  # idle: the next write starts the watchdog again
        if self._loop.time() - self._answered_at > self._timeout:
            self._lost(BrokerUnavailable(f"redis did not answer within {self._timeout} s"))
            return
        self._watch_soon()

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

    def _fail_in_flight(self, error: BrokerError) -> None:
        waiting, self._in_flight = self._in_flight, deque()
        for future, _ in waiting:
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved (see _fail)

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
        self._ended = None
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


def _send(conn: AbstractConnection, chunks: list[bytes]) -> None:
    """One write of every chunk, now (redis-py's send wraps each write in a task with a
    timeout). No drain: the in-flight bound (:data:`MAX_IN_FLIGHT`) bounds the buffer."""
    writer = getattr(conn, "_writer", None)
    if not isinstance(writer, asyncio.StreamWriter) or writer.transport.is_closing():
        raise RedisConnectionError("the publish connection is closed")
    writer.writelines(chunks)


def _uses_script(commands: list[Command]) -> bool:
    return any(command[0] is _EVALSHA for command in commands)


def _pack(conn: AbstractConnection, commands: list[Command]) -> list[bytes]:
    """The commands in RESP: hiredis packs one in about 1 µs, redis-py's encoder in 14.

    Arguments are str, bytes or int only (what the broker sends), which both encode alike.
    """
    if pack_command is None:  # pragma: no cover - hiredis is part of the redis extra
        return conn.pack_commands(commands)
    return [pack_command(command) for command in commands]
