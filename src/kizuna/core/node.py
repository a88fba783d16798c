"""The Node owns everything on one server process.

It holds the connected clients, the hub, the broker and presence store, the
authenticator and the channel rules, and implements the operations every edge
shares — subscribe with recovery, publish, history, presence — so that
WebSocket, SSE, long-poll, Socket.IO, gRPC and the HTTP API behave the same.

Subscribe, step by step
-----------------------
1. Check the channel rules, the token's channels and the per-connection limit.
2. Register the client in the hub as *pending*; publications that arrive from
   now on are buffered for it with their offsets.
3. Make sure this node's broker subscription to the channel exists (one per
   node and channel, shared by all local subscribers).
4. Read the channel's position, or, when the client asked to recover, the
   history after its position. Recovery is all-or-nothing: if the epoch
   changed or the history no longer reaches back far enough, the client gets
   ``recovered: false`` and no publications — never a silent gap.
5. Activate the subscription: reply, then replay the buffered publications
   newer than what the reply carried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kizuna import __version__
from kizuna.core.channels import ChannelRules, namespace_of
from kizuna.core.client import Client, ClientState
from kizuna.core.deadlines import Deadlines
from kizuna.core.events import NodeEvents, NoEvents, NoTracer, Tracer
from kizuna.core.hub import Hub
from kizuna.core.options import NamespaceOptions, NodeOptions
from kizuna.core.ports import (
    Authenticator,
    Broker,
    Credentials,
    HistoryResult,
    PresenceStore,
    PublishOptions,
)
from kizuna.core.revocation import (
    CONTROL_CHANNEL,
    RevocationList,
    revoke_token_message,
    revoke_user_message,
)
from kizuna.exceptions import AuthError, BrokerError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.protocol.messages import ClientInfo, Publication, Publish, StreamPosition

__all__ = ["Node", "Subscription", "continues"]

_T = TypeVar("_T")


@dataclass(slots=True)
class Subscription:
    """What a subscribe produced, for the edge to turn into its own answer.

    position: where the channel's history stands (None: the namespace keeps no history).
    recovered: None when no recovery was asked; else whether ``publications``
    hold everything published after the asked position.
    followups: pushes buffered while subscribing, to queue right after the answer.
    """

    channel: str
    position: StreamPosition | None = None
    recovered: bool | None = None
    publications: list[Publication] = field(default_factory=list)
    followups: list[bytes] = field(default_factory=list)

    def reply(self) -> dict[str, Any]:
        """The native protocol's subscribe result."""
        if self.position is None:
            return {}
        result: dict[str, Any] = {
            "recoverable": True,
            "offset": self.position.offset,
            "epoch": self.position.epoch,
        }
        if self.recovered is not None:
            result["recovered"] = self.recovered
        if self.recovered:
            result["publications"] = [codec.encode_publication(p) for p in self.publications]
        return result


class Node:
    """One kizuna server process: clients, hub, broker, presence, auth."""

    def __init__(
        self,
        broker: Broker,
        presence: PresenceStore,
        *,
        authenticator: Authenticator | None = None,
        options: NodeOptions | None = None,
        events: NodeEvents | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.broker = broker
        self.presence_store = presence
        self.pipelines_publishes = broker.pipelines_publishes
        """The broker fixes a publish's place in its order when :meth:`publish` is called,
        before the first await (an optional capability: redis.RedisBroker on standalone
        Redis). Then a client's publishes may overlap (client.Client._pipeline_publish)
        and still be applied in command order; other brokers run them one at a time."""
        self.publishes_in_call = broker.publishes_in_call and tracer is None
        """The broker publishes before the call returns (memory), and no span has to be
        made: a client's publish is answered in the call (Client.handle_command_nowait)."""
        self.authenticator = authenticator
        self.options = options or NodeOptions()
        self.events: NodeEvents = events or NoEvents()
        self.tracer: Tracer = tracer or NoTracer()
        self.tracing = tracer is not None
        self.rules = ChannelRules(self.options.namespaces)
        self.hub = Hub()
        self.version = __version__
        self.clients: dict[str, Client] = {}
        self.users: dict[str, set[Client]] = {}
        self.ips: dict[str, int] = {}
        """Connections per client IP, for max_connections_per_ip."""
        self.anonymous_allowed = any(ns.allow_anonymous for ns in self.options.namespaces.values())
        self.draining = False
        self.stopping = asyncio.Event()
        """Set when the node starts draining: held requests (long-polls) answer at once."""
        self._closed = False
        self.revocations = RevocationList()
        self.loop: asyncio.AbstractEventLoop
        """The event loop the node runs in; set by :meth:`start`."""
        self.deadlines: Deadlines
        """The clients' connect and token-expiry deadlines, on one timer; set by :meth:`start`."""
        self._dirty: list[Client] = []
        self._written: dict[str, list[int]] = {}
        self._flush_pending = False
        self._broker_subscriptions: dict[str, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self.loop)
        await self.broker.start(self)
        try:
            await self.broker.subscribe(CONTROL_CHANNEL)
        except BrokerError:
            # The broker is down at start: keep trying, the node serves meanwhile.
            self.spawn(self._subscribe_control())

    async def _subscribe_control(self, delay: float = 0.5) -> None:
        while not self.draining:  # shutdown waits for background work: stop when it begins
            await asyncio.sleep(delay)
            try:
                await self.broker.subscribe(CONTROL_CHANNEL)
            except BrokerError:
                delay = min(delay * 2, 10.0)
            else:
                return

    async def close_clients(
        self, code: DisconnectCode = DisconnectCode.SHUTDOWN, window: float = 0.0
    ) -> None:
        """Refuse new clients, then close every client with ``code``.

        Each client first gets a ``disconnect`` push with a random ``delay_ms``
        (reconnect advice) and whatever was queued for it; the closes are spread
        evenly over ``window`` seconds so that thousands of clients do not all
        reconnect to the remaining nodes at the same moment.
        """
        self.draining = True
        self.stopping.set()
        clients = list(self.clients.values())
        random.shuffle(clients)
        step = window / len(clients) if clients else 0.0

        async def close_later(client: Client, delay: float) -> None:
            if delay:
                await asyncio.sleep(delay)
            advice = codec.encode_disconnect_push(int(code), code.reason, code.reconnect)
            client.enqueue(advice[:-1] + b',"delay_ms":%d}' % random.randint(0, 1000))
            await client.close(code, flush=True)

        await asyncio.gather(*(close_later(c, i * step) for i, c in enumerate(clients)))

    async def shutdown(self, code: DisconnectCode = DisconnectCode.SHUTDOWN) -> None:
        """Close every client, let background work finish, then close the broker. Idempotent."""
        if self._closed:
            return
        await self.close_clients(code)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._closed = True
        self.deadlines.close()
        await self.broker.close()

    def schedule_flush(self, client: Client) -> None:
        """Have ``client``'s queue written at the end of this loop turn.

        One callback per turn for the whole node, however many connections got
        messages: a fan-out to a thousand subscribers queues a thousand times,
        then writes once per connection, coalescing whatever arrived meanwhile.
        """
        self._dirty.append(client)
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def written(self, transport: str) -> list[int]:
        """The tally of frames written by :meth:`_flush` on ``transport``:
        [messages, frames, bytes], shared by its connections, reported once per flush."""
        tally = self._written.get(transport)
        if tally is None:
            tally = self._written[transport] = [0, 0, 0]
        return tally

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._flush_pending = False
        for client in dirty:
            client.flush_now()
        for transport, tally in self._written.items():
            if tally[1]:
                self.events.frames_written(transport, tally[0], tally[1], tally[2])
                tally[0] = tally[1] = tally[2] = 0

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        # The node's loop: asyncio.get_running_loop() costs a getpid() syscall on 3.11.
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def ready(self) -> bool:
        return not self.draining and await self.broker.healthy()

    # --- clients -------------------------------------------------------------------------

    async def authenticate(self, token: str, transport: str) -> Credentials:
        if self.authenticator is None:
            raise AuthError(ErrorCode.UNAUTHORIZED, "authentication is not configured")
        try:
            credentials = await self.authenticator.authenticate(token)
            if self.revocations.revoked(credentials):
                raise AuthError(ErrorCode.UNAUTHORIZED, "token revoked")
        except AuthError as exc:
            self.events.auth_failed(transport, exc.code)
            raise
        return credentials

    def register(self, client: Client) -> DisconnectCode | None:
        """Admit a client that sent connect; returns a disconnect code if a limit refuses it."""
        opts = self.options
        if self.draining:
            return DisconnectCode.SHUTDOWN
        ip = client.ip
        per_user = len(self.users.get(client.user, ())) if client.user else 0
        per_ip = self.ips.get(ip, 0) if ip else 0
        refused = None
        if opts.max_connections and len(self.clients) >= opts.max_connections:
            refused = "connections"
        elif opts.max_connections_per_user and per_user >= opts.max_connections_per_user:
            refused = "connections_per_user"
        elif opts.max_connections_per_ip and per_ip >= opts.max_connections_per_ip:
            refused = "connections_per_ip"
        if refused is not None:
            self.events.limit_refused(refused)
            return DisconnectCode.CONNECTION_LIMIT
        self.clients[client.id] = client
        if client.user:
            self.users.setdefault(client.user, set()).add(client)
        if ip:
            self.ips[ip] = self.ips.get(ip, 0) + 1
        self.events.connection_opened(client.transport.name, client.namespace)
        return None

    def unregister(self, client: Client) -> None:
        """Forget a client that is closing: its subscriptions, presence, user entry."""
        if self.clients.pop(client.id, None) is None:
            return
        user_clients = self.users.get(client.user)
        if user_clients is not None:
            user_clients.discard(client)
            if not user_clients:
                del self.users[client.user]
        ip = client.ip
        if ip in self.ips:
            self.ips[ip] -= 1
            if not self.ips[ip]:
                del self.ips[ip]
        for channel in list(client.subscriptions):
            self._drop_subscription(client, channel)

    async def disconnect_user(
        self, user: str, code: DisconnectCode = DisconnectCode.FORBIDDEN
    ) -> int:
        """Close every connection of ``user`` on this node; returns how many."""
        clients = list(self.users.get(user, ()))
        await asyncio.gather(*(c.close(code) for c in clients))
        return len(clients)

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe_client(
        self, client: Client, channel: str, since: StreamPosition | None
    ) -> Subscription:
        """Subscribe ``client``; see :class:`Subscription` for what the caller must send.

        The caller queues its answer and then ``followups`` *without awaiting in
        between*: from the moment this returns, live publications go straight
        to the client's queue, and they must come after the buffered ones.
        """
        options = self.rules.check_subscribe(channel, client.credentials)
        if channel in client.subscriptions:
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)
        limit = self.options.max_channels_per_connection
        if limit and len(client.subscriptions) >= limit:
            self.events.limit_refused("channels_per_connection")
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {limit} channels")
        if since is not None and not options.recoverable:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE, "no history to recover from here")

        span = None
        if self.tracing:
            attributes = _messaging(channel, "receive")
            span = self.tracer.start(f"subscribe {namespace_of(channel)}", "server", attributes)
        try:
            return await self._subscribe(client, channel, since, options)
        except BaseException as exc:
            if span is not None:
                span.end(type(exc).__name__)
                span = None
            raise
        finally:
            if span is not None:
                span.end()

    async def _subscribe(
        self,
        client: Client,
        channel: str,
        since: StreamPosition | None,
        options: NamespaceOptions,
    ) -> Subscription:
        client.subscriptions.add(channel)
        self.hub.add_pending(channel, client, options.drop_oldest)
        try:
            await self.ensure_broker_subscription(channel)
            sub = await self._position_or_recovery(channel, options, since)
            if options.presence:
                await self._broker_call(
                    "presence_add",
                    self.presence_store.add_presence(
                        channel, client.info, self.options.presence_ttl
                    ),
                )
        except BaseException:
            self._drop_subscription(client, channel, announce=False)
            raise
        if client.state is ClientState.CLOSED or channel not in client.subscriptions:
            return sub
        buffered = self.hub.activate(channel, client)
        if sub.position is not None:
            subscribers = self.hub.get(channel)
            assert subscribers is not None
            subscribers.note_position(sub.position.offset, sub.position.epoch)
        if options.join_leave:
            self.spawn(self._broker_call("join", self.broker.publish_join(channel, client.info)))
        top = sub.position.offset if sub.position else 0
        sub.followups = [data for offset, data in buffered if offset == 0 or offset > top]
        return sub

    async def _position_or_recovery(
        self, channel: str, options: NamespaceOptions, since: StreamPosition | None
    ) -> Subscription:
        if not options.recoverable:
            return Subscription(channel)
        if since is None:
            current = await self._broker_call("history", self.broker.history(channel, limit=0))
            return Subscription(channel, current.position)
        history = await self._broker_call(
            "history",
            self.broker.history(channel, since=since, limit=self.options.history_max_limit + 1),
        )
        recovered = continues(since, history, self.options.history_max_limit)
        self.events.recovery(recovered)
        return Subscription(
            channel,
            history.position,
            recovered=recovered,
            publications=history.publications if recovered else [],
        )

    async def unsubscribe_client(self, client: Client, channel: str) -> None:
        self._drop_subscription(client, channel)

    def _drop_subscription(self, client: Client, channel: str, *, announce: bool = True) -> None:
        """Forget one subscription; its broker, presence and leave work runs in the background."""
        client.subscriptions.discard(channel)
        if self.hub.remove(channel, client):
            self.spawn(self.release_broker_subscription(channel))
        if not announce:
            return
        try:
            options = self.rules.options(channel)
        except ProtocolError:
            return
        if options.presence:
            self.spawn(
                self._broker_call(
                    "presence_remove", self.presence_store.remove_presence(channel, client.id)
                )
            )
        if options.join_leave:
            self.spawn(self._broker_call("leave", self.broker.publish_leave(channel, client.info)))

    async def ensure_broker_subscription(self, channel: str) -> None:
        ready = self._broker_subscriptions.get(channel)
        if ready is not None:
            await asyncio.shield(ready)
            return
        ready = asyncio.get_running_loop().create_future()
        self._broker_subscriptions[channel] = ready
        try:
            await self._broker_call("subscribe", self.broker.subscribe(channel))
        except BaseException as exc:
            del self._broker_subscriptions[channel]
            ready.set_exception(exc)
            ready.exception()  # mark retrieved; waiters get it through shield
            raise
        ready.set_result(None)

    async def release_broker_subscription(self, channel: str) -> None:
        ready = self._broker_subscriptions.get(channel)
        if ready is None or not ready.done() or self.hub.get(channel) is not None:
            return
        del self._broker_subscriptions[channel]
        await self._broker_call("unsubscribe", self.broker.unsubscribe(channel))

    # --- operations shared by every edge -------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        idempotency_key: str | None = None,
        options: NamespaceOptions | None = None,
        traceparent: str | None = None,
    ) -> StreamPosition:
        """Publish ``data`` (JSON bytes) to ``channel`` on every node.

        Nothing here awaits before the broker's ``publish`` is called, so a broker
        that :attr:`pipelines_publishes` takes the publication in call order.
        """
        if options is None:
            options = self.rules.options(channel)
        publish_options = _publish_options(options, idempotency_key)
        if not self.tracing:
            pub = Publication(data, 0, info, time.time(), traceparent)
            try:
                position = await self.broker.publish(channel, pub, publish_options)
            except BrokerError:
                self.events.broker_operation("publish", False)
                raise
            self.events.broker_operation("publish", True)
            return position
        attributes = _messaging(channel, "publish")
        span = self.tracer.start(
            f"publish {namespace_of(channel)}", "producer", attributes, traceparent
        )
        try:
            pub = Publication(data, 0, info, time.time(), span.traceparent)
            send = self.tracer.start("broker publish", "client", attributes, span.traceparent)
            try:
                position = await self._broker_call(
                    "publish", self.broker.publish(channel, pub, publish_options)
                )
            except BaseException as exc:
                send.end(type(exc).__name__)
                raise
            send.end()
        except BaseException as exc:
            span.end(type(exc).__name__)
            raise
        span.end()
        return position

    def publish_now(
        self, cmd: Publish, info: ClientInfo, options: NamespaceOptions
    ) -> StreamPosition:
        """A client's :meth:`publish`, done in the call; only when :attr:`publishes_in_call`."""
        pub = Publication(cmd.data, 0, info, time.time())
        kept = _publish_options(options, cmd.idempotency_key)
        position = self.broker.publish_now(cmd.channel, pub, kept)
        self.events.broker_operation("publish", True)
        return position

    def publish_nowait(
        self, cmd: Publish, info: ClientInfo, options: NamespaceOptions
    ) -> asyncio.Future[StreamPosition] | None:
        """A client's :meth:`publish` started in the call, for a broker that
        :attr:`pipelines_publishes`.

        No coroutine and no task per publish (a client's pipelined publishes,
        client.py): the future resolves when the broker answers; read it with
        :meth:`publish_outcome`. None when tracing — spans need :meth:`publish`.
        """
        if self.tracing or not self.pipelines_publishes:
            return None
        pub = Publication(cmd.data, 0, info, time.time())
        return self.broker.publish_nowait(
            cmd.channel, pub, _publish_options(options, cmd.idempotency_key)
        )

    def publish_outcome(self, future: asyncio.Future[StreamPosition]) -> StreamPosition:
        """The position of a finished :meth:`publish_nowait`, or its error, raised; counted."""
        try:
            position = future.result()
        except BrokerError:
            self.events.broker_operation("publish", False)
            raise
        self.events.broker_operation("publish", True)
        return position

    async def history(
        self,
        channel: str,
        limit: int | None = None,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> dict[str, Any]:
        cap = self.options.history_max_limit
        limit = cap if limit is None else min(limit, cap)
        result = await self._broker_call(
            "history", self.broker.history(channel, since=since, limit=limit, reverse=reverse)
        )
        return {
            "publications": [codec.encode_publication(p) for p in result.publications],
            "offset": result.position.offset,
            "epoch": result.position.epoch,
        }

    async def presence(self, channel: str) -> dict[str, Any]:
        entries = await self._broker_call("presence", self.presence_store.presence(channel))
        return {
            "clients": {cid: {"user": i.user, "client": i.client} for cid, i in entries.items()}
        }

    async def presence_stats(self, channel: str) -> dict[str, Any]:
        clients, users = await self._broker_call(
            "presence_stats", self.presence_store.presence_stats(channel)
        )
        return {"num_clients": clients, "num_users": users}

    async def _broker_call(self, operation: str, call: Coroutine[Any, Any, _T]) -> _T:
        try:
            result = await call
        except BrokerError:
            self.events.broker_operation(operation, False)
            raise
        self.events.broker_operation(operation, True)
        return result

    # --- revocation ----------------------------------------------------------------------

    async def revoke_token(self, token_id: str, until: float) -> None:
        """Refuse the token with this ``jti`` on every node until ``until``; close its holders."""
        await self._control_publish(revoke_token_message(token_id, until))

    async def revoke_user(self, user: str, before: float, until: float) -> None:
        """Refuse ``user``'s tokens issued up to ``before`` on every node; close them."""
        await self._control_publish(revoke_user_message(user, before, until))

    async def _control_publish(self, message: bytes) -> None:
        pub = Publication(message, 0, None, time.time())
        await self._broker_call(
            "publish", self.broker.publish(CONTROL_CHANNEL, pub, PublishOptions())
        )

    def _control(self, message: bytes) -> None:
        if self.revocations.apply(message) is None:
            return
        for client in list(self.clients.values()):
            if client.credentials is not None and self.revocations.revoked(client.credentials):
                client.close_soon(DisconnectCode.FORBIDDEN, "token revoked")

    # --- BrokerEventHandler --------------------------------------------------------------

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        subscribers = self.hub.get(channel)
        if subscribers is None:
            if channel == CONTROL_CHANNEL:
                self._control(pub.data)
            return
        if pub.offset:
            follows = subscribers.follows(pub.offset, epoch)
            if follows is None:  # a duplicate after a broker reconnect: already delivered
                return
            if not follows:
                self.handle_gap(channel)
                return
        namespace = subscribers.namespace
        span = None
        if self.tracing:
            attributes = _messaging(channel, "process")
            span = self.tracer.start(
                f"deliver {namespace}", "consumer", attributes, pub.traceparent
            )
        data = codec.encode_publication_push(channel, pub, epoch)
        recipients = subscribers.broadcast(data, pub.offset)
        latency = time.time() - pub.published_at if pub.published_at else 0.0
        self.events.fanned_out(namespace, recipients, latency, pub.traceparent)
        if span is not None:
            span.end()

    def handle_gap(self, channel: str) -> None:
        """Close this channel's local subscribers with 3005: they reconnect and recover,
        or learn ``recovered: false`` — a gap is never passed over silently."""
        subscribers = self.hub.get(channel)
        if subscribers is None:
            return
        self.events.recovery(False)
        for client in [*subscribers.active, *subscribers.pending]:
            if isinstance(client, Client):
                client.close_soon(DisconnectCode.INSUFFICIENT_STATE, f"gap in {channel}")
        subscribers.offset = -1

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        subscribers = self.hub.get(channel)
        if subscribers is not None:
            subscribers.broadcast(codec.encode_join_push(channel, info), 0)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        subscribers = self.hub.get(channel)
        if subscribers is not None:
            subscribers.broadcast(codec.encode_leave_push(channel, info), 0)


_PUBLISH_OPTIONS: dict[tuple[int, float], PublishOptions] = {}
"""PublishOptions without an idempotency key, per (history size, history ttl)."""


def _publish_options(options: NamespaceOptions, idempotency_key: str | None) -> PublishOptions:
    """How a publication in a namespace with ``options`` is kept (one object per namespace)."""
    if idempotency_key is not None:
        return PublishOptions(options.history_size, options.history_ttl, idempotency_key)
    key = (options.history_size, options.history_ttl)
    cached = _PUBLISH_OPTIONS.get(key)
    if cached is None:
        cached = _PUBLISH_OPTIONS[key] = PublishOptions(*key)
    return cached


def _messaging(channel: str, operation: str) -> dict[str, str | int]:
    """OpenTelemetry messaging semantic-convention attributes for one channel."""
    return {
        "messaging.system": "kizuna",
        "messaging.destination.name": channel,
        "messaging.operation.type": operation,
    }


def continues(since: StreamPosition, history: HistoryResult, limit: int) -> bool:
    """Whether ``history`` (read after ``since``) holds exactly everything published since.

    True when the epoch is the same and the publications start right after
    ``since`` (or there are none and the stream has not moved), and there are
    no more than ``limit`` of them. Anything else is a gap the reader must be told of.
    """
    top, pubs = history.position, history.publications
    if since.epoch != top.epoch or len(pubs) > limit:
        return False
    if not pubs:
        return since.offset == top.offset
    return pubs[0].offset == since.offset + 1
