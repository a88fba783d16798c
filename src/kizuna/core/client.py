"""One client connection, whatever transport carries it.

Life of a connection
--------------------
1. The transport creates a :class:`Client` once its handshake succeeded (and,
   if a token came with the handshake, once the node verified it).
2. The first command must be ``connect``; anything else closes with 4001. A
   client that sends nothing within ``connect_timeout`` is closed with 3007.
3. After connect, commands are answered in order. Replies and pushes share one
   outbound queue, so a client sees them in the order the server made them.
   Publishes may overlap (see "Pipelined publishes"); their replies still
   come in command order.
4. The connection ends with a disconnect code: sent by the server
   (:meth:`close`) or observed by the transport (:meth:`transport_closed`).

Outbound queue and writer
-------------------------
:meth:`enqueue` appends bytes and counts them. When the queue holds more than
``client_queue_max_bytes`` the client is too slow: it is disconnected with
3002 (reconnect and recover) instead of holding memory or slowing others. A
writer task exists only while there is something to write; it takes the whole
queue at once and writes it as one newline-delimited frame.

Pipelined publishes
-------------------
With a broker that ``pipelines_publishes`` (Redis), a connection's publishes
overlap and are answered in command order: core/replies.py tells how.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any

from kizuna.core.ports import Credentials, Transport
from kizuna.core.replies import (
    PendingReply,
    PublishOutcome,
    ReplyQueue,
    position_result,
    publish_reply,
)
from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.protocol.messages import (
    ClientInfo,
    Command,
    CommandRejected,
    Connect,
    History,
    Ping,
    Presence,
    PresenceStats,
    Publish,
    Refresh,
    StreamPosition,
    Subscribe,
    Unsubscribe,
)

if TYPE_CHECKING:
    from kizuna.core.node import Node

__all__ = ["MAX_PIPELINED_PUBLISHES", "Client", "ClientState"]

MAX_PIPELINED_PUBLISHES = 256
"""Most unanswered publishes per connection (module doc, "Pipelined publishes", 4).

Enough to keep the broker's pipeline busy for a fast publisher; few enough that
a flood is held back in the kernel rather than in tasks and futures.
"""


class ClientState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


Handler = Callable[["Client", Any], Coroutine[Any, Any, dict[str, Any] | None]]


class Client:
    """A connection's state, its subscriptions and its outbound queue."""

    __slots__ = (
        "_deadline",
        "_queue",
        "_queue_limit",
        "_queued_bytes",
        "_refilled_at",
        "_refused",
        "_replies",
        "_scheduled",
        "_tokens",
        "_write_nowait",
        "_writer",
        "_written",
        "credentials",
        "id",
        "info",
        "namespace",
        "node",
        "remote_addr",
        "state",
        "subscriptions",
        "transport",
    )

    def __init__(
        self,
        node: Node,
        transport: Transport,
        *,
        credentials: Credentials | None = None,
        remote_addr: str = "",
        namespace: str = "/",
    ) -> None:
        self.node = node
        self.transport = transport
        self.credentials = credentials
        self.remote_addr = remote_addr
        self.namespace = namespace
        """The metrics label of this connection (a Socket.IO namespace, or '/')."""
        self.id = secrets.token_hex(8)
        self.info = ClientInfo(user="", client=self.id)
        self.state = ClientState.CONNECTING
        self.subscriptions: set[str] = set()
        self._queue: list[bytes | memoryview] = []
        """Encoded messages; memoryviews are publications a drop-oldest policy may shed."""
        self._queued_bytes = 0
        self._queue_limit = node.options.client_queue_max_bytes
        self._writer: asyncio.Task[None] | None = None
        self._scheduled = False
        """Queued messages wait for the node's flush or this connection's writer task."""
        self._write_nowait = getattr(transport, "write_nowait", None)
        self._written = node.written(transport.name)
        """The node's tally of frames written by its flush on this transport (Node.written)."""
        self._deadline: int | None = None
        """The slot of this connection's deadline in ``node.deadlines`` (connect, then expiry)."""
        self._tokens = float(node.options.command_burst)
        self._refilled_at = time.monotonic()
        self._refused = 0
        self._replies: ReplyQueue | None = None
        """Places of the replies to unanswered pipelined publishes, in command order."""

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.info.user!r} {self.state.value}>"

    @property
    def user(self) -> str:
        return self.info.user

    @property
    def closed(self) -> bool:
        return self.state is ClientState.CLOSED

    @property
    def ip(self) -> str:
        """The peer's address without the port ('' when unknown)."""
        return self.remote_addr.rpartition(":")[0]

    def allow_command(self) -> bool:
        """The command-rate token bucket: True if one more command may run now.

        Every edge that takes commands from a client calls it once per command;
        a refusal is counted, and ``refused_in_a_row`` tells how persistent the client is.
        """
        rate = self.node.options.command_rate
        if not rate:
            return True
        now = time.monotonic()
        burst = self.node.options.command_burst
        self._tokens = min(burst, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._refused = 0
            return True
        self._refused += 1
        self.node.events.limit_refused("command_rate")
        return False

    @property
    def refused_in_a_row(self) -> int:
        return self._refused

    # --- outbound ------------------------------------------------------------------------

    def enqueue(self, data: bytes) -> None:
        """Queue bytes for this connection. Never blocks; the hot path of fan-out."""
        if self.state is ClientState.CLOSED:
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self._queue_limit:
            self._overflow()
        elif not self._scheduled:
            self._scheduled = True
            self.node.schedule_flush(self)

    def enqueue_droppable(self, data: memoryview) -> None:
        """Queue a publication that may be dropped, oldest first, when the queue is full.

        Droppable entries are memoryviews (the hub shares one per publication);
        ``b"\\n".join`` writes them like bytes. Only when dropping every droppable
        entry is not enough is the client disconnected as slow.
        """
        if self.state is ClientState.CLOSED:
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        limit = self._queue_limit
        if self._queued_bytes > limit:
            kept: list[bytes | memoryview] = []
            dropped = 0
            for entry in self._queue:
                if self._queued_bytes > limit and type(entry) is memoryview:
                    self._queued_bytes -= len(entry)
                    dropped += 1
                else:
                    kept.append(entry)
            self._queue = kept
            self.node.events.messages_dropped(self.transport.name, dropped)
            if self._queued_bytes > limit:
                self._overflow()
                return
        if not self._scheduled:
            self._scheduled = True
            self.node.schedule_flush(self)

    def _overflow(self) -> None:
        self._queue.clear()
        self._queued_bytes = 0
        self.node.events.slow_client(self.transport.name)
        self.close_soon(DisconnectCode.SLOW)

    def flush_now(self) -> None:
        """Write everything queued as one frame; called by the node once per loop turn.

        The fast path writes synchronously (a transport with ``write_nowait``
        and room in its buffer): no task, no await, nothing for the cyclic GC.
        Otherwise — the peer is slow and the transport applies backpressure, or
        the transport is only asynchronous — a writer task takes over until the
        queue is empty.
        """
        if self.state is ClientState.CLOSED or not self._queue:
            self._scheduled = False
            return
        write_nowait = self._write_nowait
        if write_nowait is not None:
            batch = self._queue
            frame = codec.join_frame(batch)
            try:
                written = write_nowait(frame)
            except Exception:
                self._scheduled = False
                self.close_soon(DisconnectCode.WRITE_ERROR)
                return
            if written:
                self._queue = []
                self._queued_bytes = 0
                self._scheduled = False
                tally = self._written
                tally[0] += len(batch)
                tally[1] += 1
                tally[2] += len(frame)
                return
        self._writer = self.node.loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        events = self.node.events
        name = self.transport.name
        try:
            while self._queue and self.state is not ClientState.CLOSED:
                batch, self._queue = self._queue, []
                self._queued_bytes = 0
                frame = codec.join_frame(batch)
                await self.transport.write(frame)
                events.frames_written(name, len(batch), 1, len(frame))
        except Exception:
            self.close_soon(DisconnectCode.WRITE_ERROR)
        finally:
            self._writer = None
            self._scheduled = False

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the transport."""
        while self._scheduled and self.state is not ClientState.CLOSED:
            writer = self._writer
            if writer is None:
                await asyncio.sleep(0)  # the node's flush runs on the next loop turn
            else:
                await asyncio.shield(writer)

    # --- inbound -------------------------------------------------------------------------

    async def handle_frame(self, frame: bytes | str) -> None:
        """Decode one inbound frame and answer each command in it, in order."""
        rest = self.handle_frame_nowait(frame)
        if rest is not None:
            await rest

    def handle_frame_nowait(self, frame: bytes | str) -> Coroutine[Any, Any, None] | None:
        """:meth:`handle_frame` as far as it goes without waiting; the rest as a coroutine.

        A busy connection's commands are mostly publishes, which are answered (or,
        on a pipelining broker, handed over) in the call: no coroutine per command,
        and a transport that would run a task per frame (websocket_protocol.Inbox)
        runs none. From the first command that has to wait, the frame's commands are
        left to the coroutine returned, which the caller must run to its end before
        the next frame.
        """
        limit = self.node.options.max_message_size
        # A str is measured in UTF-8 bytes; encoding is only needed when it might be over.
        if len(frame) > limit or (
            isinstance(frame, str) and len(frame) * 4 > limit and len(frame.encode()) > limit
        ):
            return self.close(DisconnectCode.MESSAGE_TOO_LARGE)
        try:
            commands = codec.decode_frame(frame)
        except ProtocolError as exc:
            return self.close(DisconnectCode.BAD_REQUEST, exc.message)
        for i, command in enumerate(commands):
            if self.state is ClientState.CLOSED:
                return None
            rest = self.handle_command_nowait(command)
            if rest is not None:
                return self._handle_commands(rest, commands[i + 1 :])
        return None

    async def _handle_commands(
        self, first: Coroutine[Any, Any, None], commands: list[Command | CommandRejected]
    ) -> None:
        """Run ``first`` (what is left of one command) to its end, then ``commands``."""
        await first
        for command in commands:
            if self.state is ClientState.CLOSED:
                return
            await self.handle_command(command)

    async def handle_command(self, command: Command | CommandRejected) -> None:
        rest = self.handle_command_nowait(command)
        if rest is not None:
            await rest

    def handle_command_nowait(
        self, command: Command | CommandRejected, started: float | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """Answer ``command`` in the call when nothing has to be waited for; else return
        the coroutine that answers it.

        In the call: refusals, a publish handed to a pipelining broker, and the
        commands of :data:`_HANDLERS_NOW` (a publish to a broker that publishes in
        the call, a ping). ``started``: when the command arrived, for its duration.
        """
        if started is None:
            started = time.perf_counter()
        if self.state is ClientState.CONNECTING and type(command) is not Connect:
            return self.close(DisconnectCode.BAD_REQUEST, "connect first")
        if type(command) is Publish and self.node.pipelines_publishes:
            return self._pipeline_publish(command, started)
        if self._replies:  # the barrier (module doc, "Pipelined publishes", 3)
            return self._after_replies(command, started)
        if not self.allow_command():
            if self._refused > self.node.options.command_burst:
                return self.close(DisconnectCode.TOO_MANY_REQUESTS, flush=True)
            self._answered(command, started, ProtocolError(ErrorCode.TOO_MANY_REQUESTS))
            return None
        if isinstance(command, CommandRejected):
            self.enqueue(codec.encode_error_reply(command.id, command.code, command.message))
            self.node.events.command_handled(
                self.transport.name, "invalid", time.perf_counter() - started, command.code
            )
            return None
        now = _HANDLERS_NOW.get(type(command))
        if now is None or (type(command) is Publish and not self.node.publishes_in_call):
            return self._run_handler(command, started)
        try:
            outcome: dict[str, Any] | Exception | None = now(self, command)
        except (ProtocolError, BrokerError) as exc:
            outcome = exc
        self._answered(command, started, outcome)
        return None

    async def _run_handler(self, command: Command, started: float) -> None:
        try:
            outcome: dict[str, Any] | Exception | None = await _HANDLERS[type(command)](
                self, command
            )
        except (ProtocolError, BrokerError) as exc:
            outcome = exc
        self._answered(command, started, outcome)

    async def _after_replies(self, command: Command | CommandRejected, started: float) -> None:
        await self._wait_for_replies(0)
        if self.state is not ClientState.CLOSED:
            rest = self.handle_command_nowait(command, started)
            if rest is not None:
                await rest

    def _answered(
        self,
        command: Command | CommandRejected,
        started: float,
        outcome: dict[str, Any] | Exception | None,
    ) -> None:
        """Queue the reply to ``command`` and count it.

        ``outcome``: the handler's result; None when the handler replied itself
        (subscribe) or closed the connection; or the error it is answered with.
        """
        error = 0
        if type(outcome) is dict:  # the usual case first
            if self.state is not ClientState.CLOSED:
                self.enqueue(codec.encode_reply(command.id, outcome))
        elif isinstance(outcome, ProtocolError):
            error = outcome.code
            self.enqueue(codec.encode_error_reply(command.id, error, outcome.message))
        elif isinstance(outcome, BrokerError):
            error = ErrorCode.BROKER_UNAVAILABLE
            self.enqueue(codec.encode_error_reply(command.id, error, ErrorCode(error).description))
        self.node.events.command_handled(
            self.transport.name, _METHOD_NAMES[type(command)], time.perf_counter() - started, error
        )

    # --- pipelined publishes (module doc) -----------------------------------------------

    def _pipeline_publish(
        self, command: Publish, started: float
    ) -> Coroutine[Any, Any, None] | None:
        """Hand ``command`` to the broker in the call, if the broker takes it so.

        Only when the node :attr:`~kizuna.core.node.Node.pipelines_publishes`. Returns
        what is left to wait for, as a coroutine: room in a full pipeline (module doc,
        "Pipelined publishes", 4), or the close of a client over its rate. None: the
        publish is under way, or answered already.
        """
        replies = self._replies
        if replies is None:
            replies = self._replies = ReplyQueue()
        elif len(replies) >= MAX_PIPELINED_PUBLISHES:
            return self._publish_when_room(command, started)
        pending = replies.reserve()
        if self.allow_command():
            self._start_publish(command, pending, started)
            return None
        if self._refused > self.node.options.command_burst:
            replies.withdraw_last()
            return self._close_refused()
        self._answer_publish(command, pending, started, ErrorCode.TOO_MANY_REQUESTS)
        return None

    async def _publish_when_room(self, command: Publish, started: float) -> None:
        await self._wait_for_replies(MAX_PIPELINED_PUBLISHES - 1)
        if self.state is ClientState.CLOSED:
            return
        rest = self._pipeline_publish(command, started)
        if rest is not None:
            await rest

    async def _close_refused(self) -> None:
        """Close a client that kept sending over its rate, after its earlier replies."""
        await self._wait_for_replies(0)
        await self.close(DisconnectCode.TOO_MANY_REQUESTS, flush=True)

    def _start_publish(self, command: Publish, pending: PendingReply, started: float) -> None:
        """Hand ``command`` to the broker now; its reply takes ``pending``'s place when it comes.

        Usually a future and a callback (Node.publish_nowait): no coroutine or task
        per publish. With tracing, a task runs the traced :meth:`_publish`.
        """
        try:
            options = self.node.rules.check_publish(command.channel, self.credentials)
            future = self.node.publish_nowait(command, self.info, options)
        except ProtocolError as exc:
            self._answer_publish(command, pending, started, exc)
            return
        if future is None:
            pending.task = self.node.loop.create_task(self._run_publish(command, pending, started))
            return
        pending.task = future

        def answered(future: asyncio.Future[StreamPosition]) -> None:
            try:
                outcome: StreamPosition | BaseException = self.node.publish_outcome(future)
            except BaseException as exc:  # CancelledError too: answered, as INTERNAL
                outcome = exc
            self._answer_publish(command, pending, started, outcome)

        future.add_done_callback(answered)

    async def _run_publish(self, command: Publish, pending: PendingReply, started: float) -> None:
        try:
            result = await self._publish(command)
        except BaseException as exc:
            self._answer_publish(command, pending, started, exc)
            if not isinstance(exc, Exception):  # a cancellation (or an exit) goes on
                raise
            return
        self._answer_publish(command, pending, started, result)

    def _answer_publish(
        self,
        command: Publish,
        pending: PendingReply,
        started: float,
        outcome: PublishOutcome,
    ) -> None:
        """Fill ``pending`` with the reply to ``command`` and queue the replies now in order."""
        pending.data, error = publish_reply(command.id, outcome)
        pending.task = None
        self._release_replies()
        self.node.events.command_handled(
            self.transport.name, "publish", time.perf_counter() - started, error
        )

    def _release_replies(self) -> None:
        """Queue the replies that are ready and have none unready before them."""
        replies = self._replies
        if replies is None:
            return
        for data in replies.take_ready():
            self.enqueue(data)
        if not replies:
            self._replies = None  # an idle connection holds no queue

    async def _wait_for_replies(self, most: int) -> None:
        """Wait until at most ``most`` pipelined publishes are unanswered (or closed)."""
        replies = self._replies
        if replies is not None:
            await replies.wait(most, self.node.loop, lambda: self.state is ClientState.CLOSED)

    # --- commands --------------------------------------------------------------------------

    async def _connect(self, cmd: Connect) -> dict[str, Any] | None:
        if self.state is ClientState.CONNECTED:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "already connected")
        credentials = self.credentials
        if cmd.token:
            credentials = await self.node.authenticate(cmd.token, self.transport.name)
        if not await self.accept(credentials):
            return None
        result: dict[str, Any] = {
            "client": self.id,
            "version": self.node.version,
            "ping": self.node.options.ping_interval,
        }
        result.update(self._expiry_fields())
        return result

    async def accept(self, credentials: Credentials | None) -> bool:
        """Admit this connection as ``credentials`` (None: anonymous).

        The connect command ends here; transports without a connect command
        (SSE, Socket.IO, gRPC) call it directly after their handshake. On
        refusal the connection is closed with the code and False returned.
        """
        span = None
        if self.node.tracing:
            span = self.node.tracer.start(
                "connect", "server", {"kizuna.transport": self.transport.name}
            )
        admitted = await self._admit(credentials)
        if span is not None:
            span.end(None if admitted else "refused")
        return admitted

    async def _admit(self, credentials: Credentials | None) -> bool:
        if credentials is None and not self.node.anonymous_allowed:
            self.node.events.auth_failed(self.transport.name, ErrorCode.UNAUTHORIZED)
            await self.close(DisconnectCode.UNAUTHORIZED, "token required")
            return False
        self.credentials = credentials
        self.info = ClientInfo(user=credentials.user if credentials else "", client=self.id)
        code = self.node.register(self)
        if code is not None:
            await self.close(code)
            return False
        self.state = ClientState.CONNECTED
        self._schedule_expiry()
        return True

    def _expiry_fields(self) -> dict[str, Any]:
        expires_at = self.credentials.expires_at if self.credentials else None
        if expires_at is None:
            return {"expires": False}
        return {"expires": True, "ttl": max(0, int(expires_at - time.time()))}

    def start_connect_deadline(self, timeout: float) -> None:
        """Close with 3007 unless the connect command has been handled within ``timeout``.

        The deadline takes the place the token-expiry deadline takes later:
        connecting replaces it and closing drops it, so a connection that went
        away is not held by one (core/deadlines.py: one timer for all of them).
        """
        self._deadline = self.node.deadlines.add(self, timeout)

    def deadline_passed(self) -> None:
        """``node.deadlines``: the connect command, or the token and its grace, ran out."""
        self._deadline = None
        if self.state is ClientState.CONNECTING:
            self.close_soon(DisconnectCode.CONNECT_TIMEOUT)
        elif self.state is ClientState.CONNECTED:
            self.close_soon(DisconnectCode.TOKEN_EXPIRED)

    def _drop_deadline(self) -> None:
        if self._deadline is not None:
            self.node.deadlines.discard(self, self._deadline)
            self._deadline = None

    def _schedule_expiry(self) -> None:
        self._drop_deadline()
        expires_at = self.credentials.expires_at if self.credentials else None
        if expires_at is not None:
            # Clients refresh before expiry; the grace covers one that is late or reconnecting.
            delay = max(0.0, expires_at - time.time()) + self.node.options.token_expiry_grace
            self._deadline = self.node.deadlines.add(self, delay)

    async def _refresh(self, cmd: Refresh) -> dict[str, Any]:
        if self.credentials is None:
            # An anonymous connection has no session to extend; it reconnects with a token.
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "anonymous connections cannot refresh")
        credentials = await self.node.authenticate(cmd.token, self.transport.name)
        if credentials.user != self.credentials.user:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "token is for another user")
        self.credentials = credentials
        self._schedule_expiry()
        return self._expiry_fields()

    async def _subscribe(self, cmd: Subscribe) -> None:
        sub = await self.node.subscribe_client(self, cmd.channel, cmd.since)
        # No await between these: live publications may be queued right after.
        self.enqueue(codec.encode_reply(cmd.id, sub.reply()))
        for data in sub.followups:
            self.enqueue(data)

    async def _unsubscribe(self, cmd: Unsubscribe) -> dict[str, Any]:
        if cmd.channel not in self.subscriptions:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED)
        await self.node.unsubscribe_client(self, cmd.channel)
        return {}

    def _publish_in_call(self, cmd: Publish) -> dict[str, Any]:
        """:meth:`_publish` on a broker that publishes in the call (Node.publishes_in_call)."""
        options = self.node.rules.check_publish(cmd.channel, self.credentials)
        return position_result(self.node.publish_now(cmd, self.info, options))

    async def _publish(self, cmd: Publish) -> dict[str, Any]:
        options = self.node.rules.check_publish(cmd.channel, self.credentials)
        position = await self.node.publish(
            cmd.channel,
            cmd.data,
            info=self.info,
            idempotency_key=cmd.idempotency_key,
            options=options,
        )
        return position_result(position)

    async def _history(self, cmd: History) -> dict[str, Any]:
        options = self.node.rules.check_read(cmd.channel, self.credentials)
        if not options.allow_history or not options.recoverable:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE, "history is off in this namespace")
        return await self.node.history(cmd.channel, cmd.limit, cmd.since, cmd.reverse)

    async def _presence(self, cmd: Presence) -> dict[str, Any]:
        options = self.node.rules.check_read(cmd.channel, self.credentials)
        if not options.presence:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE, "presence is off in this namespace")
        return await self.node.presence(cmd.channel)

    async def _presence_stats(self, cmd: PresenceStats) -> dict[str, Any]:
        options = self.node.rules.check_read(cmd.channel, self.credentials)
        if not options.presence:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE, "presence is off in this namespace")
        return await self.node.presence_stats(cmd.channel)

    def _ping(self, cmd: Ping) -> dict[str, Any]:
        return {}

    # --- closing -------------------------------------------------------------------------

    def close_soon(self, code: DisconnectCode, reason: str | None = None) -> None:
        """Close from synchronous code (timers, the fan-out path).

        The connection stops taking messages at once — so a slow client never
        sees a gap before its 3002 — while the rest (leaving the hub, the close
        frame) runs in the background: the caller may be iterating the hub.
        """
        if self.state is ClientState.CLOSED:
            return
        was_connected = self.state is ClientState.CONNECTED
        self._stop()
        self.node.spawn(self._end(code, reason, was_connected, sent=True))

    async def close(
        self, code: DisconnectCode, reason: str | None = None, *, flush: bool = False
    ) -> None:
        """Disconnect with ``code``. ``flush`` first writes what is queued (polite shutdown)."""
        if self.state is ClientState.CLOSED:
            return
        if flush:
            # Publishes under way may already be applied: answer them before closing,
            # so that a client does not retry what was published.
            await self._wait_for_replies(0)
            await self.flush()
            if self.closed:  # closed by someone else while flushing
                return
        was_connected = self.state is ClientState.CONNECTED
        self._stop()
        await self._end(code, reason, was_connected, sent=True)

    def transport_closed(self, code: int) -> None:
        """The peer went away (or the transport failed) with ``code``."""
        if self.state is ClientState.CLOSED:
            return
        was_connected = self.state is ClientState.CONNECTED
        self._stop()
        self._report(code, was_connected, sent=False)
        self.node.unregister(self)

    def _stop(self) -> None:
        """Take no more messages."""
        self.state = ClientState.CLOSED
        self._queue.clear()
        self._queued_bytes = 0
        self._drop_deadline()

    async def _end(self, code: int, reason: str | None, was_connected: bool, sent: bool) -> None:
        self._report(code, was_connected, sent)
        self.node.unregister(self)
        text = reason or (code.reason if isinstance(code, DisconnectCode) else "")
        await self.transport.close(int(code), text)

    def _report(self, code: int, was_connected: bool, sent: bool) -> None:
        if was_connected:
            self.node.events.connection_closed(self.transport.name, self.namespace, code)
        elif sent:
            self.node.events.connection_rejected(self.transport.name, code)


_HANDLERS: dict[type, Handler] = {
    Connect: Client._connect,
    Subscribe: Client._subscribe,
    Unsubscribe: Client._unsubscribe,
    Publish: Client._publish,
    History: Client._history,
    Presence: Client._presence,
    PresenceStats: Client._presence_stats,
    Refresh: Client._refresh,
}

HandlerNow = Callable[["Client", Any], dict[str, Any] | None]

_HANDLERS_NOW: dict[type, HandlerNow] = {
    Publish: Client._publish_in_call,  # only when the node publishes_in_call
    Ping: Client._ping,
}
"""Commands answered in the call (Client.handle_command_nowait): nothing to wait for."""

_METHOD_NAMES: dict[type, str] = {
    Connect: "connect",
    Subscribe: "subscribe",
    Unsubscribe: "unsubscribe",
    Publish: "publish",
    History: "history",
    Presence: "presence",
    PresenceStats: "presence_stats",
    Ping: "ping",
    Refresh: "refresh",
    CommandRejected: "invalid",
}
