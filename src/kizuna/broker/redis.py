"""The Redis broker: Pub/Sub for fan-out, Streams for history, hashes for presence.

Chosen by ``--broker redis://host:port/db`` (``rediss://`` for TLS,
``redis+cluster://host:port`` for Redis Cluster). Options ride in the URL's
query string (see :class:`RedisOptions`); the rest of the query goes to
redis-py unchanged (``socket_timeout``, ``ssl_ca_certs``, ...).

What each operation costs
-------------------------
* publish with history: one Lua script (redis_scripts.PUBLISH) that assigns
  the next offset, XADDs, sets the TTL, remembers an idempotency key and
  PUBLISHes — atomic, so the offset returned is the offset every node sees;
* publish without history: one PUBLISH;
* subscribe: one SUBSCRIBE on this node's Pub/Sub connection, only for
  channels with local subscribers (see redis_pubsub.py);
* history and recovery: one script reading the stream;
* presence: a hash and a zset of expiry times per channel; this node refreshes
  its own entries every third of their TTL, so a crashed node's entries expire.

When Redis goes away
--------------------
Every Redis error is translated here: connection failures and timeouts raise
:class:`BrokerUnavailable`, anything else :class:`BrokerError` (``raise ...
from exc``); no redis-py exception leaves this module. :meth:`healthy` turns
False, publishes fail loudly (never vanish), and the Pub/Sub reader reconnects
with backoff and resubscribes. Before it delivers live messages again it reads
what each channel published meanwhile from the stream and delivers that first,
so subscribers miss nothing the stream still holds. When the stream cannot
close the gap (Redis lost it: new epoch; or trimmed), the handler's optional
``handle_gap(channel)`` is called, if it has one, so the node can make its
clients recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, fields
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kizuna.broker.redis_envelope import (
    JOIN,
    LEAVE,
    PUBLICATION,
    EnvelopeError,
    decode_info,
    decode_publication,
    encode_info,
    encode_tail,
    unhistoried,
)
from kizuna.broker.redis_pubsub import Subscriber, SubscriberSettings
from kizuna.broker.redis_scripts import (
    HISTORY,
    PRESENCE_ADD,
    PRESENCE_READ,
    PRESENCE_REMOVE,
    PUBLISH,
    ChannelKeys,
)
from kizuna.core.ports import BrokerEventHandler, HistoryResult, PublishOptions
from kizuna.exceptions import BrokerError, BrokerUnavailable, ConfigError
from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = ["RedisBroker", "RedisOptions"]

log = logging.getLogger("kizuna.broker.redis")

_T = TypeVar("_T")

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Settings of the Redis broker; each may be given in the URL query (``?prefix=app1``)."""

    prefix: str = "kizuna"
    """Prefix of every key and channel name, so several deployments can share one Redis."""
    sharded_pubsub: bool | None = None
    """SSUBSCRIBE/SPUBLISH (Redis 7+). None: on for ``redis+cluster://``, off otherwise."""
    max_connections: int = 64
    """Command connections per Redis server; callers wait for a free one."""
    socket_timeout: float = 5.0
    """Seconds a command may take before it fails with BrokerUnavailable."""
    connect_timeout: float = 2.0
    """Seconds to establish a connection."""
    start_timeout: float = 5.0
    """Seconds start() waits for Redis; after that the node starts not-ready and keeps trying."""
    reconnect_min_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    ping_interval: float = 5.0
    """Pub/Sub keepalive: a connection silent for two intervals is replaced."""
    health_timeout: float = 1.0
    """Seconds healthy() waits for a PING."""
    idempotency_window: float = 300.0
    """Seconds a publish idempotency key is remembered."""
    empty_history_ttl: float = 3600.0
    """Seconds the epoch of a channel that was read but never published to is kept."""
    catch_up_limit: int = 1000
    """Most publications read from a stream to close the gap after a reconnect."""

    @classmethod
    def parse(cls, query: dict[str, str], overrides: dict[str, Any]) -> RedisOptions:
        """Options from the URL query and keyword overrides; every bad value reported at once."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            raw: Any = overrides.get(f.name, query.get(f.name))
            if raw is None:
                continue
            try:
                values[f.name] = _convert(f.name, raw, getattr(cls(), f.name), f.type)
            except ValueError as exc:
                problems.append(f"broker: {f.name}: {exc}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        problems.extend(f"broker: unknown option {name!r}" for name in sorted(unknown))
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def _convert(name: str, raw: Any, default: Any, annotation: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if "bool" in str(annotation):
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if isinstance(default, int):
        value: float = int(raw)
    elif isinstance(default, float):
        value = float(raw)
    else:
        return raw
    if value < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return value


class _Slot:
    """One subscribed channel: its name, and the last position delivered for it.

    The position is what lets the broker drop duplicates after a catch-up read
    and know where to read from after a reconnect.
    """

    __slots__ = ("channel", "epoch", "held", "live", "offset")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.epoch = ""
        self.offset = 0
        self.live = False
        self.held: list[bytes] | None = None


class RedisBroker:
    """Broker and PresenceStore on Redis (standalone or Cluster)."""

    def __init__(
        self, client: Redis | RedisCluster, options: RedisOptions, *, cluster: bool = False
    ) -> None:
        self._redis = client
        self._options = options
        self._cluster = client if isinstance(client, RedisCluster) else None
        sharded = options.sharded_pubsub if options.sharded_pubsub is not None else cluster
        self._publish_command = "spublish" if sharded else "publish"
        self._settings = SubscriberSettings(
            reconnect_min_delay=options.reconnect_min_delay,
            reconnect_max_delay=options.reconnect_max_delay,
            ping_interval=options.ping_interval,
            subscribe_timeout=options.socket_timeout,
            sharded=sharded,
        )
        self._publish_script = client.register_script(PUBLISH)
        self._history_script = client.register_script(HISTORY)
        self._presence_add = client.register_script(PRESENCE_ADD)
        self._presence_remove = client.register_script(PRESENCE_REMOVE)
        self._presence_read = client.register_script(PRESENCE_READ)
        self._handler: BrokerEventHandler | None = None
        self._slots: dict[bytes, _Slot] = {}
        self._subscribers: dict[str, Subscriber] = {}
        self._routes: dict[bytes, Subscriber] = {}
        self._local_presence: dict[str, dict[str, tuple[str, float]]] = {}
        self._presence_changed = asyncio.Event()
        self._late_removals: list[tuple[str, str]] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisBroker:
        """``redis://``, ``rediss://`` or ``redis+cluster://`` (``rediss+cluster://``)."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        own = {f.name for f in fields(RedisOptions)}
        options = RedisOptions.parse({k: v for k, v in query.items() if k in own}, overrides)
        rest = urlencode({k: v for k, v in query.items() if k not in own})
        scheme, _, variant = parts.scheme.partition("+")
        if scheme not in ("redis", "rediss") or variant not in ("", "cluster"):
            raise ConfigError([f"broker: not a Redis URL: {url!r}"])
        target = urlunsplit((scheme, parts.netloc, parts.path, rest, ""))
        common: dict[str, Any] = {
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
        }
        try:
            if variant == "cluster":
                client: Redis | RedisCluster = RedisCluster.from_url(
                    target, max_connections=options.max_connections, **common
                )
            else:
                pool = BlockingConnectionPool.from_url(
                    target,
                    max_connections=options.max_connections,
                    timeout=options.socket_timeout,
                    **common,
                )
                client = Redis.from_pool(pool)  # owns the pool: aclose() closes it
        except (ValueError, RedisError) as exc:
            raise ConfigError([f"broker: invalid Redis URL {url!r}: {exc}"]) from exc
        return cls(client, options, cluster=variant == "cluster")

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect; if Redis is not there yet, start anyway (not healthy) and keep trying."""
        self._handler = handler
        if self._cluster is not None:
            try:
                await self._call(self._cluster.initialize())
            except BrokerError as exc:
                log.warning("redis cluster not reachable at start: %s", exc)
        if not self._settings.sharded or self._cluster is None:
            subscriber = self._new_subscriber("")
            if not await subscriber.start(self._options.start_timeout):
                log.warning("redis not reachable at start; retrying in the background")
        loop = asyncio.get_running_loop()
        self._refresher = loop.create_task(self._refresh_presence_forever())

    async def close(self) -> None:
        """Stop reading and refreshing. Presence entries are left to expire: the node
        removes its clients' entries before it closes the broker, and a node that
        cannot (it crashed) must not leave them forever — which is what the TTL is for.
        """
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._subscribers.values()))
        self._subscribers.clear()
        self._routes.clear()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def healthy(self) -> bool:
        """Pub/Sub connected and a PING answered within ``health_timeout``."""
        if self._handler is None or not all(s.connected for s in self._subscribers.values()):
            return False
        try:
            async with asyncio.timeout(self._options.health_timeout):
                await self._redis.ping()
        except (RedisError, RedisClusterException, OSError, TimeoutError):
            return False
        return True

    @property
    def reconnects(self) -> int:
        """Pub/Sub reconnections since start (for metrics and tests)."""
        return sum(s.reconnects for s in self._subscribers.values())

    # --- publishing ----------------------------------------------------------------------

    async def publish(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        keys = ChannelKeys.of(self._options.prefix, channel)
        tail = encode_tail(pub)
        if options.history_size <= 0:
            if self._publish_command == "spublish":
                await self._call(self._redis.spublish(keys.pubsub, unhistoried(tail)))
            else:
                await self._call(self._redis.publish(keys.pubsub, unhistoried(tail)))
            return StreamPosition(0, "")
        key = options.idempotency_key
        result = await self._call(
            self._publish_script(
                keys=[keys.stream, keys.meta, keys.idempotency(key) if key else keys.meta],
                args=[
                    keys.pubsub,
                    tail,
                    options.history_size,
                    _ms(options.history_ttl),
                    _new_epoch(),
                    self._publish_command,
                    _ms(self._options.idempotency_window) if key else 0,
                ],
            )
        )
        return StreamPosition(int(result[0]), _text(result[1]))

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw(channel, encode_info(JOIN, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw(channel, encode_info(LEAVE, info))

    async def _publish_raw(self, channel: str, payload: bytes) -> None:
        name = ChannelKeys.of(self._options.prefix, channel).pubsub
        if self._publish_command == "spublish":
            await self._call(self._redis.spublish(name, payload))
        else:
            await self._call(self._redis.publish(name, payload))

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        name = ChannelKeys.of(self._options.prefix, channel).pubsub.encode()
        if name in self._slots:
            return
        slot = self._slots[name] = _Slot(channel)
        try:
            subscriber = await self._route(name)
            await subscriber.subscribe(name)
        except BaseException:
            self._slots.pop(name, None)
            self._routes.pop(name, None)
            raise
        slot.live = True

    async def unsubscribe(self, channel: str) -> None:
        name = ChannelKeys.of(self._options.prefix, channel).pubsub.encode()
        self._slots.pop(name, None)
        subscriber = self._routes.pop(name, None)
        if subscriber is not None:
            await subscriber.unsubscribe(name)

    def _new_subscriber(self, label: str) -> Subscriber:
        subscriber = Subscriber(
            label or "redis",
            lambda: self._pubsub_connection(label),
            self._settings,
            deliver=self._deliver,
            resync=self._catch_up,
            lost=self._lost,
        )
        self._subscribers[label] = subscriber
        return subscriber

    def _pubsub_connection(self, label: str) -> AbstractConnection:
        """A fresh connection for Pub/Sub: to ``label`` (host:port) in Cluster, else the server."""
        if self._cluster is None:
            pool = self._redis.connection_pool  # type: ignore[union-attr]
            kwargs = dict(pool.connection_kwargs)
            kwargs["client_name"] = f"{self._options.prefix}-pubsub"
            kwargs["protocol"] = 2  # messages as plain arrays, read by our own loop
            connection: AbstractConnection = pool.connection_class(**kwargs)
            return connection
        node = self._cluster.get_node(node_name=label) if label else None
        if node is None:
            node = self._cluster.get_random_node()
        kwargs = dict(node.connection_kwargs)
        kwargs["client_name"] = f"{self._options.prefix}-pubsub"
        kwargs["protocol"] = 2
        return node.connection_class(**kwargs)

    async def _route(self, name: bytes) -> Subscriber:
        """The subscriber that must hold ``name``: the only one, or its slot owner's in Cluster."""
        subscriber = self._routes.get(name)
        if subscriber is not None:
            return subscriber
        if self._cluster is None or not self._settings.sharded:
            subscriber = self._subscribers[""]
        else:
            try:
                node = self._cluster.get_node_from_key(name.decode())
            except (RedisError, RedisClusterException) as exc:
                raise BrokerUnavailable(f"redis cluster: no owner for {name!r}: {exc}") from exc
            if node is None:
                raise BrokerUnavailable(f"redis cluster: no owner for {name!r}")
            subscriber = self._subscribers.get(node.name) or self._new_subscriber(node.name)
            if not subscriber._tasks:
                await subscriber.start(self._options.connect_timeout)
        self._routes[name] = subscriber
        return subscriber

    def _lost(self, subscriber: Subscriber, name: bytes) -> None:
        """Redis dropped ``name`` (its slot moved): subscribe it where it lives now."""
        self._routes.pop(name, None)
        slot = self._slots.get(name)
        if slot is not None:
            self._spawn(self._move(name, slot))

    async def _move(self, name: bytes, slot: _Slot) -> None:
        slot.held = []
        try:
            if self._cluster is not None:
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    await self._cluster.nodes_manager.initialize()
            for attempt in range(10):
                if self._slots.get(name) is not slot:
                    return
                try:
                    subscriber = await self._route(name)
                    await subscriber.subscribe(name)
                    break
                except BrokerError as exc:
                    self._routes.pop(name, None)
                    log.warning("redis: resubscribing %r failed: %s", slot.channel, exc)
                    await asyncio.sleep(self._options.reconnect_min_delay * 2**attempt)
            else:
                self._gap(slot)
                return
            await self._catch_up_slot(slot)
        finally:
            held, slot.held = slot.held, None
            for payload in held or ():
                self._dispatch(slot, payload)

    # --- delivery (the hot path) ---------------------------------------------------------

    def _deliver(self, name: bytes, payload: bytes) -> None:
        slot = self._slots.get(name)
        if slot is None:
            return  # unsubscribed meanwhile, or another deployment's channel
        held = slot.held
        if held is not None:
            held.append(payload)
            return
        self._dispatch(slot, payload)

    def _dispatch(self, slot: _Slot, payload: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            kind = payload[0]
            if kind == PUBLICATION:
                pub, epoch = decode_publication(payload)
                offset = pub.offset
                if offset:
                    if epoch == slot.epoch and offset <= slot.offset:
                        return  # already delivered by a catch-up read
                    slot.offset = offset
                    slot.epoch = epoch
                handler.handle_publication(slot.channel, pub, epoch)
            elif kind == JOIN:
                handler.handle_join(slot.channel, decode_info(payload))
            elif kind == LEAVE:
                handler.handle_leave(slot.channel, decode_info(payload))
            else:
                raise EnvelopeError(f"unknown envelope kind {kind!r}")
        except Exception:
            log.exception("redis: dropped a message on %r", slot.channel)

    # --- catching up after a reconnect ---------------------------------------------------

    async def _catch_up(self, subscriber: Subscriber, names: list[bytes]) -> None:
        """Deliver what was published while ``names`` were not subscribed (runs in the reader)."""
        slots = [slot for name in names if (slot := self._slots.get(name)) is not None]
        await asyncio.gather(*(self._catch_up_slot(slot) for slot in slots if slot.epoch))

    async def _catch_up_slot(self, slot: _Slot) -> None:
        if not slot.epoch:
            return
        since = StreamPosition(slot.offset, slot.epoch)
        limit = self._options.catch_up_limit
        try:
            result = await self.history(slot.channel, since=since, limit=limit + 1)
        except BrokerUnavailable:
            raise  # the reader reconnects and tries again
        except BrokerError:
            log.exception("redis: catch-up read failed for %r", slot.channel)
            self._gap(slot)
            return
        pubs = result.publications
        top = result.position
        if (
            top.epoch != since.epoch
            or len(pubs) > limit
            or (pubs and pubs[0].offset != since.offset + 1)
            or (not pubs and top.offset != since.offset)
        ):
            self._gap(slot, top)
            return
        handler = self._handler
        if handler is None:
            return
        for pub in pubs:
            slot.offset = pub.offset
            handler.handle_publication(slot.channel, pub, top.epoch)

    def _gap(self, slot: _Slot, top: StreamPosition | None = None) -> None:
        """The stream cannot close the gap: tell the handler, if it listens."""
        log.warning("redis: publications on %r were lost while reconnecting", slot.channel)
        if top is not None:
            slot.offset, slot.epoch = top.offset, top.epoch
        notify = getattr(self._handler, "handle_gap", None)
        if notify is not None:
            try:
                notify(slot.channel)
            except Exception:
                log.exception("redis: handle_gap failed for %r", slot.channel)

    # --- history -------------------------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        keys = ChannelKeys.of(self._options.prefix, channel)
        result = await self._call(
            self._history_script(
                keys=[keys.stream, keys.meta],
                args=[
                    _new_epoch(),
                    _ms(self._options.empty_history_ttl),
                    since.offset if since is not None else "",
                    since.epoch if since is not None else "",
                    -1 if limit is None else max(limit, 0),
                    1 if reverse else 0,
                ],
            )
        )
        position = StreamPosition(int(result[0]), _text(result[1]))
        try:
            pubs = [decode_publication(raw)[0] for raw in result[2]]
        except EnvelopeError as exc:
            raise BrokerError(f"corrupt history in {keys.stream!r}: {exc}") from exc
        slot = self._slots.get(keys.pubsub.encode())
        if slot is not None and slot.live and not slot.epoch:
            # The first position seen since subscribing: where a catch-up starts from.
            slot.offset, slot.epoch = position.offset, position.epoch
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        keys = ChannelKeys.of(self._options.prefix, channel)
        await self._call(self._redis.delete(keys.stream, keys.meta))

    # --- presence ------------------------------------------------------------------------

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Add ``info``; this node refreshes it every ``ttl / 3`` until it is removed."""
        ttl = ttl if ttl > 0 else 60.0
        keys = ChannelKeys.of(self._options.prefix, channel)
        await self._call(
            self._presence_add(
                keys=[keys.presence, keys.presence_expiry], args=[_ms(ttl), info.client, info.user]
            )
        )
        self._local_presence.setdefault(channel, {})[info.client] = (info.user, ttl)
        self._presence_changed.set()

    async def remove_presence(self, channel: str, client_id: str) -> None:
        entries = self._local_presence.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._local_presence[channel]
        if self._late_removals is not None:
            self._late_removals.append((channel, client_id))
        keys = ChannelKeys.of(self._options.prefix, channel)
        await self._call(
            self._presence_remove(keys=[keys.presence, keys.presence_expiry], args=[client_id])
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        keys = ChannelKeys.of(self._options.prefix, channel)
        flat = await self._call(
            self._presence_read(keys=[keys.presence, keys.presence_expiry], args=["all"])
        )
        return {
            _text(flat[i]): ClientInfo(_text(flat[i + 1]), _text(flat[i]))
            for i in range(0, len(flat), 2)
        }

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        keys = ChannelKeys.of(self._options.prefix, channel)
        clients, users = await self._call(
            self._presence_read(keys=[keys.presence, keys.presence_expiry], args=["stats"])
        )
        return int(clients), int(users)

    async def _refresh_presence_forever(self) -> None:
        """Refresh this node's entries every third of the shortest TTL among them.

        Entries are written with their full TTL when added, so only entries older
        than the last refresh need refreshing: the clock starts at the last refresh
        (or at the first entry), never at the latest add.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            self._presence_changed.clear()
            if not self._local_presence:
                await self._presence_changed.wait()
                last = loop.time()
                continue
            interval = min(t for e in self._local_presence.values() for _, t in e.values()) / 3
            wait = last + interval - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._presence_changed.wait()
                continue  # woken by an add (maybe a shorter TTL) or due: look again
            last = loop.time()
            try:
                await self._refresh_presence()
            except BrokerError as exc:
                log.warning("redis: presence refresh failed: %s", exc)

    async def _refresh_presence(self) -> None:
        """Re-add this node's entries; removals that raced with the refresh are replayed."""
        self._late_removals = []
        try:
            calls = []
            for channel, entries in self._local_presence.items():
                keys = ChannelKeys.of(self._options.prefix, channel)
                by_ttl: dict[float, list[str]] = {}
                for client, (user, ttl) in entries.items():
                    by_ttl.setdefault(ttl, []).extend((client, user))
                for ttl, pairs in by_ttl.items():
                    for i in range(0, len(pairs), 1000):
                        calls.append(
                            self._presence_add(
                                keys=[keys.presence, keys.presence_expiry],
                                args=[_ms(ttl), *pairs[i : i + 1000]],
                            )
                        )
            results = await asyncio.gather(*(self._call(c) for c in calls), return_exceptions=True)
        finally:
            late, self._late_removals = self._late_removals, None
        for channel, client_id in late:
            keys = ChannelKeys.of(self._options.prefix, channel)
            await self._call(
                self._presence_remove(keys=[keys.presence, keys.presence_expiry], args=[client_id])
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # --- helpers -------------------------------------------------------------------------

    async def _call(self, call: Awaitable[_T]) -> _T:
        """Await a redis-py call, translating its errors into kizuna's."""
        try:
            return await call
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise BrokerError(f"redis error: {exc}") from exc

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)


def _new_epoch() -> str:
    """A fresh epoch, used only if the channel has none: 48 random bits, as hex."""
    return f"{random.getrandbits(48):012x}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
