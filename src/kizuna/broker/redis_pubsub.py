"""Pub/Sub connections of the Redis broker: one per Redis server, one reader each.

Theory of operation
-------------------
A :class:`Subscriber` owns one connection to one Redis server and the set of
Pub/Sub channels that should be subscribed on it. One reader takes everything
the connection receives — a task while it (re)connects and resubscribes, then
the transport's callback (redis_tap.py), while the task waits for the
connection's end; everything else only *writes* to it (SUBSCRIBE, UNSUBSCRIBE,
PING). Redis answers commands in the order it received them, interleaved with
messages, so the reader can attribute each confirmation (or error) to the
command at the head of :attr:`Subscriber._inflight`.

1. ``subscribe`` sends ``SUBSCRIBE <name>`` and waits until the reader sees the
   confirmation: from then on Redis delivers every later publication, which is
   what the Broker contract promises once ``subscribe`` returns.
2. Messages go straight from the reader to ``deliver(name, payload)``: no
   queue, no task, no copy between the socket and the broker's dispatcher.
3. When the connection fails (Redis stopped, network cut, no PONG within a
   ping interval), the subscriber reports itself down at once, fails pending
   subscribes with BrokerUnavailable, and reconnects with exponential backoff
   and jitter. On reconnect it first resubscribes every channel, *holding* the
   messages that arrive meanwhile; then it awaits ``resync(names)`` (the broker
   reads what was published while it was away from the stream), then delivers
   the held messages, and only then reports itself up. The broker drops
   duplicates by offset, so each publication reaches the handler once and in
   order.

In sharded mode (Redis Cluster, or standalone Redis 7 asked to) the same runs
with SSUBSCRIBE / SUNSUBSCRIBE / ``smessage``. Redis may drop a shard channel
on its own when its slot moves to another server (an unsolicited
``sunsubscribe``); that is reported through ``lost(subscriber, name)`` so the
broker can subscribe it on the new owner. A server that keeps failing (it
died; a replica took over elsewhere) is reported through ``failed(subscriber,
attempts)`` after each failed attempt, so the broker can look up who owns the
channels now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from kizuna.broker.redis_client import open_connection
from kizuna.broker.redis_tap import tap
from kizuna.exceptions import BrokerError, BrokerUnavailable

__all__ = ["Subscriber", "SubscriberSettings"]

log = logging.getLogger("kizuna.broker.redis")

Deliver = Callable[[bytes, bytes], None]
Resync = Callable[["Subscriber", list[bytes]], Awaitable[None]]
Lost = Callable[["Subscriber", bytes], None]
Failed = Callable[["Subscriber", int], None]


@dataclass(frozen=True, slots=True)
class SubscriberSettings:
    """Timings of a Pub/Sub connection, in seconds."""

    reconnect_min_delay: float = 0.1
    """First reconnect delay; it doubles per failed attempt (with jitter)."""
    reconnect_max_delay: float = 5.0
    """Longest delay between reconnect attempts."""
    ping_interval: float = 5.0
    """A PING is sent this often; no PONG by the next one means the connection is dead."""
    subscribe_timeout: float = 5.0
    """How long a subscribe waits for Redis to confirm it before BrokerUnavailable."""
    sharded: bool = False
    """SSUBSCRIBE (sharded Pub/Sub, Redis 7+) instead of SUBSCRIBE."""


class Subscriber:
    """One Pub/Sub connection to one Redis server, and the channels it should hold."""

    def __init__(
        self,
        label: str,
        connect: Callable[[], AbstractConnection],
        settings: SubscriberSettings,
        *,
        deliver: Deliver,
        resync: Resync,
        lost: Lost | None = None,
        failed: Failed | None = None,
    ) -> None:
        self.label = label
        self.channels: dict[bytes, None] = {}
        """Names that should be subscribed (an ordered set); resubscribed after a reconnect."""
        self.connected = False
        self.reconnects = 0
        """Connections made after the first one (for metrics and tests)."""
        self._connect = connect
        self._settings = settings
        self._deliver = deliver
        self._resync = resync
        self._lost = lost
        self._failed = failed
        if settings.sharded:
            self._sub, self._unsub = "SSUBSCRIBE", "SUNSUBSCRIBE"
            self._message, self._confirm, self._release = (
                b"smessage",
                b"ssubscribe",
                b"sunsubscribe",
            )
        else:
            self._sub, self._unsub = "SUBSCRIBE", "UNSUBSCRIBE"
            self._message, self._confirm, self._release = b"message", b"subscribe", b"unsubscribe"
        self._conn: AbstractConnection | None = None
        self._inflight: deque[tuple[bytes, bytes]] = deque()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._held: list[tuple[bytes, bytes]] | None = None
        self._pong_due = False
        self._tasks: list[asyncio.Task[None]] = []
        self._first: asyncio.Future[bool] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, wait: float) -> bool:
        """Start the reader; wait up to ``wait`` seconds for the first connection.

        Returns whether it connected. Either way the reader keeps trying: a node
        may start before its Redis and become ready when Redis does.
        """
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._tasks = [
            loop.create_task(self._run(), name=f"kizuna-redis-pubsub-{self.label}"),
            loop.create_task(self._keepalive(), name=f"kizuna-redis-ping-{self.label}"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                return await asyncio.shield(self._first)
        return False

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def drop(self) -> None:
        """Close the connection now; the reader fails and reconnects (dead-peer detection)."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, name: bytes) -> None:
        """Subscribe ``name``; returns once Redis confirmed it."""
        conn = self._conn
        if not self.connected or conn is None:
            raise BrokerUnavailable(f"redis pub/sub ({self.label}) is not connected")
        self.channels[name] = None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        self._inflight.append((self._confirm, name))
        try:
            # Shielded: a caller cancelled mid-write must not tear down the shared connection.
            await asyncio.shield(conn.send_command(self._sub, name))
            async with asyncio.timeout(self._settings.subscribe_timeout):
                await waiter
        except BaseException as exc:
            self.channels.pop(name, None)
            waiters = self._waiters.get(name)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
            if isinstance(exc, (RedisError, OSError, TimeoutError)):
                raise BrokerUnavailable(f"redis pub/sub subscribe failed: {exc}") from exc
            raise

    async def unsubscribe(self, name: bytes) -> None:
        """Forget ``name``. Never raises: a failed write means a reconnect, which skips it."""
        if name not in self.channels:
            return
        del self.channels[name]
        if self._conn is None:
            return
        self._inflight.append((self._release, name))
        with contextlib.suppress(RedisError, OSError):
            await asyncio.shield(self._conn.send_command(self._unsub, name))

    # --- the reader ----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            conn = self._connect()
            try:
                await open_connection(conn)
                await self._resubscribe(conn)
                if failures or (self._first is not None and self._first.done()):
                    self.reconnects += 1
                    log.warning("redis pub/sub reconnected", extra={"redis": self.label})
                failures = 0
                self._settle(True)
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failures == 0:
                    log.warning(
                        "redis pub/sub connection lost: %s", exc, extra={"redis": self.label}
                    )
            finally:
                await self._down(conn)
            failures += 1
            self._settle(False)
            if self._failed is not None:
                self._failed(self, failures)
            delay = min(
                self._settings.reconnect_max_delay,
                self._settings.reconnect_min_delay * 2 ** min(failures - 1, 30),
            )
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _settle(self, connected: bool) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(connected)

    async def _resubscribe(self, conn: AbstractConnection) -> None:
        """Subscribe everything again, let the broker catch up, then go live (module doc, 3)."""
        self._conn = conn
        self._pong_due = False
        self._held = []
        names = list(self.channels)
        if names:
            await conn.send_packed_command(conn.pack_commands([(self._sub, n) for n in names]))
            self._inflight.extend((self._confirm, n) for n in names)
        async with asyncio.timeout(self._settings.subscribe_timeout):
            while self._inflight:
                try:
                    response = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:
                    self._refused(exc)
                    continue
                self._control(response)
        await self._resync(self, [n for n in names if n in self.channels])
        held, self._held = self._held, None
        self.connected = True
        deliver = self._deliver
        for name, payload in held:
            deliver(name, payload)

    async def _read(self, conn: AbstractConnection) -> None:
        """The steady state: every reply to :meth:`_handle` as it is read, until the end."""
        await (await tap(conn, self._handle))
        raise RedisConnectionError("redis closed the pub/sub connection")

    def _handle(self, response: Any) -> None:
        """One reply of the steady state, as it is read (redis_tap.py).

        A message goes straight to ``deliver``; redis-py's ``read_response`` would cost
        several Python frames, a timeout check and a task wake per reply.
        """
        if type(response) is list and response[0] == self._message:
            self._deliver(response[1], response[2])
        elif isinstance(response, ResponseError):
            self._refused(response)
        elif isinstance(response, Exception):
            raise response
        else:
            self._control(response)

    def _control(self, response: Any) -> None:
        if not isinstance(response, list):
            # A plain reply: PONG while the connection holds no subscription.
            if response == b"PONG":
                self._pong_due = False
            return
        kind = response[0]
        if kind == self._message:
            # Only while resubscribing: held until the broker has caught up.
            assert self._held is not None
            self._held.append((response[1], response[2]))
        elif kind == self._confirm:
            name = response[1]
            if self._inflight and self._inflight[0] == (kind, name):
                self._inflight.popleft()
            waiters = self._waiters.pop(name, None)
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)
        elif kind == self._release:
            name = response[1]
            if self._inflight and self._inflight[0] == (kind, name):
                self._inflight.popleft()
            elif name in self.channels and self._lost is not None:
                # Unsolicited: Redis dropped the channel (its slot moved to another server).
                del self.channels[name]
                self._lost(self, name)
        elif kind == b"pong":
            self._pong_due = False

    def _refused(self, exc: ResponseError) -> None:
        """Redis answered a command with an error: fail whoever waits for that command."""
        if not self._inflight:
            log.warning("redis pub/sub error: %s", exc, extra={"redis": self.label})
            return
        kind, name = self._inflight.popleft()
        if kind != self._confirm:
            return
        self.channels.pop(name, None)
        # MOVED / ASK / TRYAGAIN: the slot lives elsewhere now; retrying after a topology
        # refresh will work, so it is an outage of this route, not a failure.
        failure = BrokerUnavailable if isinstance(exc, (AskError, TryAgainError)) else BrokerError
        for waiter in self._waiters.pop(name, None) or ():
            if not waiter.done():
                waiter.set_exception(failure(f"redis refused {self._sub} {name!r}: {exc}"))

    async def _down(self, conn: AbstractConnection) -> None:
        """Report the connection gone before anything else can use it, then close it."""
        self.connected = False
        self._conn = None
        self._held = None
        self._inflight.clear()
        waiters, self._waiters = self._waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("redis pub/sub connection lost"))
                    waiter.exception()  # retrieved: the subscriber may already have given up
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def _keepalive(self) -> None:
        """PING every interval; a connection that did not PONG since the last one is dead.

        A separate task, so the read loop carries no per-message timer.
        """
        while True:
            await asyncio.sleep(self._settings.ping_interval)
            conn = self._conn
            if conn is None or not self.connected:
                continue
            if self._pong_due:
                log.warning("redis pub/sub: no PONG, reconnecting", extra={"redis": self.label})
                await self.drop()
                continue
            self._pong_due = True
            with contextlib.suppress(RedisError, OSError):
                await conn.send_command("PING")
