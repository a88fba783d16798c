"""The Redis broker: Pub/Sub for fan-out, Streams for history, hashes for presence.

Chosen by ``--broker redis://host:port/db`` (``rediss://`` for TLS,
``redis+cluster://host:port`` for Redis Cluster). Options ride in the URL's
query string (see redis_client.RedisOptions); the rest of the query goes to
redis-py unchanged (``ssl_ca_certs``, ...).

The parts: redis_client.py (options, clients, error translation),
redis_scripts.py (key names, Lua), redis_envelope.py (the bytes on the wire),
redis_pubsub.py (Pub/Sub connections and their reader), redis_pipeline.py
(publishes, pipelined on a connection of their own), redis_presence.py.
This module ties them into the Broker and PresenceStore ports.

What each operation costs
-------------------------
* publish with history: one Lua script (redis_scripts.PUBLISH) that assigns
  the next offset, XADDs, sets the TTL, remembers an idempotency key and
  PUBLISHes — atomic, so the offset returned is the offset every node sees;
* publish without history: one PUBLISH;
* on standalone Redis, publishes (and join/leave) do not go through redis-py's
  pool: they are queued and pipelined on one connection, many per write
  (redis_pipeline.py), so a publisher's next publish need not wait for this
  one's reply (:attr:`RedisBroker.pipelines_publishes`). Redis Cluster keeps
  redis-py's cluster client, which routes every command to its slot's owner;
* subscribe: one SUBSCRIBE on this node's Pub/Sub connection, only for
  channels with local subscribers (see redis_pubsub.py);
* history and recovery: one script reading the stream;
* presence: a hash and a zset of expiry times per channel; this node refreshes
  its own entries every third of their TTL, so a crashed node's entries expire.

When Redis goes away
--------------------
Every Redis error is translated at this boundary: connection failures and timeouts raise
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
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisClusterException, RedisError

from kizuna.broker.redis_client import Calls, RedisOptions, connect
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
from kizuna.broker.redis_pipeline import PublishPipeline
from kizuna.broker.redis_presence import RedisPresence
from kizuna.broker.redis_pubsub import Subscriber, SubscriberSettings
from kizuna.broker.redis_scripts import HISTORY, PUBLISH, ChannelKeys
from kizuna.core.ports import BrokerEventHandler, HistoryResult, PublishOptions
from kizuna.exceptions import BrokerError, BrokerUnavailable
from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = ["RedisBroker", "RedisOptions"]

log = logging.getLogger("kizuna.broker.redis")


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

    def __init__(self, client: Redis | RedisCluster, options: RedisOptions) -> None:
        self._redis = client
        self._options = options
        self._cluster: RedisCluster | None = client if isinstance(client, RedisCluster) else None
        self._call = Calls(options.max_connections if self._cluster is not None else None)
        sharded = options.sharded_pubsub
        if sharded is None:
            sharded = self._cluster is not None
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
        self._presence = RedisPresence(client, options.prefix, self._call)
        self._pipeline: PublishPipeline | None = None
        if self._cluster is None:
            self._pipeline = PublishPipeline(
                lambda: self._connection("", "publish"),
                timeout=options.socket_timeout,
                script=(self._publish_script.sha, PUBLISH),
            )
        self._handler: BrokerEventHandler | None = None
        self._slots: dict[bytes, _Slot] = {}
        self._subscribers: dict[str, Subscriber] = {}
        self._routes: dict[bytes, Subscriber] = {}
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBroker:
        """``redis://``, ``rediss://``, ``redis+cluster://``; options as in RedisOptions."""
        client, parsed = connect(url, options)
        return cls(client, parsed)

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
        self._presence.start()

    async def close(self) -> None:
        """Stop reading and refreshing. Presence entries are left to expire: the node
        removes its clients' entries before it closes the broker, and a node that
        cannot (it crashed) must not leave them forever — which is what the TTL is for.
        """
        self._handler = None  # not healthy any more, and nothing is delivered
        if self._pipeline is not None:
            await self._pipeline.close()
        await self._presence.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._subscribers.values()))
        self._subscribers.clear()
        self._routes.clear()
        try:
            await self._redis.aclose()
        except (RedisError, OSError) as exc:
            log.warning("redis: closing the client failed: %s", exc)

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

    @property
    def pipelines_publishes(self) -> bool:
        """Whether a publish takes its place in Redis's order when called, before it awaits.

        True on standalone Redis (redis_pipeline.py): calls made in order are
        applied in that order, so a caller may start its next publish without
        awaiting this one (the Node lets one client's publishes overlap). False
        on Redis Cluster, where each call finds its own connection.
        """
        return self._pipeline is not None

    @property
    def publishes_in_call(self) -> bool:
        """No: Redis answers later (see :attr:`pipelines_publishes`)."""
        return False

    def publish_now(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        raise AssertionError("Redis cannot publish in the call (publishes_in_call is False)")

    async def publish(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        """Publish ``pub``; with history, atomically stored and published (one script).

        An idempotency key only applies with history (as in the memory broker):
        the key remembers the position, and a publication without history has none.
        Nothing before the pipeline's ``send`` awaits: see :attr:`pipelines_publishes`.
        """
        if self._pipeline is not None:
            return await self.publish_nowait(channel, pub, options)
        keys = ChannelKeys.of(self._options.prefix, channel)
        tail = encode_tail(pub)
        if options.history_size <= 0:
            if self._publish_command == "spublish":
                await self._call(self._redis.spublish(keys.pubsub, unhistoried(tail)))
            else:
                await self._call(self._redis.publish(keys.pubsub, unhistoried(tail)))
            return _NO_POSITION
        result = await self._call(
            self._publish_script(
                keys=self._publish_keys(keys, options.idempotency_key),
                args=self._publish_args(keys, tail, options),
            )
        )
        return _position(result)

    def publish_nowait(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> asyncio.Future[StreamPosition]:
        """:meth:`publish` without a coroutine, when :attr:`pipelines_publishes`.

        The command is queued on the pipeline at once; the future gets the
        position (or a BrokerError) when Redis answers — no task per publish.
        """
        pipeline = self._pipeline
        assert pipeline is not None, "publish_nowait needs the pipeline (pipelines_publishes)"
        keys = ChannelKeys.of(self._options.prefix, channel)
        tail = encode_tail(pub)
        if options.history_size <= 0:
            return pipeline.send(
                self._publish_command, keys.pubsub, unhistoried(tail), convert=_no_position
            )
        return pipeline.send_script(
            self._publish_keys(keys, options.idempotency_key),
            self._publish_args(keys, tail, options),
            convert=_position,
        )

    @staticmethod
    def _publish_keys(keys: ChannelKeys, idempotency_key: str | None) -> list[str]:
        """KEYS of redis_scripts.PUBLISH."""
        key = idempotency_key
        return [keys.stream, keys.meta, keys.idempotency(key) if key else keys.meta]

    def _publish_args(
        self, keys: ChannelKeys, tail: bytes, options: PublishOptions
    ) -> list[str | bytes | int]:
        """ARGV of redis_scripts.PUBLISH."""
        return [
            keys.pubsub,
            tail,
            options.history_size,
            _ms(options.history_ttl),
            _new_epoch(),
            self._publish_command,
            _ms(self._options.idempotency_window) if options.idempotency_key else 0,
        ]

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw(channel, encode_info(JOIN, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw(channel, encode_info(LEAVE, info))

    async def _publish_raw(self, channel: str, payload: bytes) -> None:
        name = ChannelKeys.of(self._options.prefix, channel).pubsub
        if self._pipeline is not None:
            await self._pipeline.send(self._publish_command, name, payload)
        elif self._publish_command == "spublish":
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
        except BaseException as exc:
            self._slots.pop(name, None)
            self._routes.pop(name, None)
            if isinstance(exc, BrokerUnavailable) and self._cluster is not None:
                self._spawn(self._refresh_topology())  # the slot may have moved
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
            lambda: self._connection(label, "pubsub"),
            self._settings,
            deliver=self._deliver,
            resync=self._catch_up,
            lost=self._lost,
            failed=self._failed if self._cluster is not None else None,
        )
        self._subscribers[label] = subscriber
        return subscriber

    def _connection(self, label: str, role: str) -> AbstractConnection:
        """A fresh connection of its own (Pub/Sub, publishing): to ``label`` (host:port) in
        Cluster, else the server. Not from the pool: it stays with its one user."""
        client = self._redis
        connection_class: type[AbstractConnection]
        if isinstance(client, RedisCluster):
            node = client.get_node(node_name=label) if label else None
            node = node or client.get_random_node()
            connection_class, kwargs = node.connection_class, dict(node.connection_kwargs)
        else:
            pool = client.connection_pool
            connection_class, kwargs = pool.connection_class, dict(pool.connection_kwargs)
        kwargs["client_name"] = f"{self._options.prefix}-{role}"
        kwargs["protocol"] = 2  # messages and replies as plain arrays, read by our own loops
        # Our readers take every reply (redis_tap.py); redis-py's health check would read one
        # itself before a write. These connections have their own: PING, and the watchdog.
        kwargs["health_check_interval"] = 0
        connection: AbstractConnection = connection_class(**kwargs)
        return connection

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
            if not subscriber.started:
                await subscriber.start(self._options.connect_timeout)
        self._routes[name] = subscriber
        return subscriber

    def _lost(self, subscriber: Subscriber, name: bytes) -> None:
        """Redis dropped ``name`` (its slot moved): subscribe it where it lives now."""
        self._routes.pop(name, None)
        slot = self._slots.get(name)
        if slot is not None and slot.held is None:  # not already moving
            self._spawn(self._move(name, slot))

    def _failed(self, subscriber: Subscriber, attempts: int) -> None:
        """A Cluster server keeps failing: after two attempts, look up the owners again."""
        if attempts == 2 and subscriber.label:
            self._spawn(self._reroute(subscriber))

    async def _reroute(self, subscriber: Subscriber) -> None:
        """Move the channels of a failing server to their owners now (after a failover)."""
        assert self._cluster is not None
        try:
            await self._call(self._cluster.nodes_manager.initialize())
        except BrokerError as exc:
            log.warning("redis cluster: topology refresh failed: %s", exc)
            return
        for name in list(subscriber.channels):
            node = self._cluster.get_node_from_key(name.decode())
            if node is not None and node.name != subscriber.label:
                del subscriber.channels[name]
                self._lost(subscriber, name)
        if not subscriber.channels and self._subscribers.get(subscriber.label) is subscriber:
            del self._subscribers[subscriber.label]
            await subscriber.close()

    async def _move(self, name: bytes, slot: _Slot) -> None:
        """Subscribe ``name`` on its new owner, holding its messages until caught up."""
        slot.held = []
        try:
            for attempt in range(10):
                if self._slots.get(name) is not slot:
                    return
                await self._refresh_topology()
                try:
                    subscriber = await self._route(name)
                    await subscriber.subscribe(name)
                    break
                except BrokerError as exc:
                    self._routes.pop(name, None)
                    log.info("redis: resubscribing %r failed: %s", slot.channel, exc)
                    await asyncio.sleep(self._options.reconnect_min_delay * 2**attempt)
            else:
                self._gap(slot)
                return
            await self._catch_up_slot(slot)
        finally:
            held, slot.held = slot.held, None
            for payload in held or ():
                self._dispatch(slot, payload)

    async def _refresh_topology(self) -> None:
        """Re-read the Cluster's slot map (after a MOVED, a slot migration or a failover)."""
        if self._cluster is not None:
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await self._cluster.nodes_manager.initialize()

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
        await self._presence.add(channel, info, ttl)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        await self._presence.remove(channel, client_id)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self._presence.get(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return await self._presence.stats(channel)

    # --- helpers -------------------------------------------------------------------------

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


_NO_POSITION = StreamPosition(0, "")
"""A publication without history has no position."""


def _no_position(_: Any) -> StreamPosition:
    return _NO_POSITION


def _position(result: Any) -> StreamPosition:
    """The PUBLISH script's reply: [offset, epoch]."""
    return StreamPosition(int(result[0]), _text(result[1]))
