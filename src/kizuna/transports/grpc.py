"""The guide's ChatService over gRPC (grpc.aio), on kizuna's channel bus.

The service is ``proto/kizuna/v1/chat.proto``; it runs in the server's process
and event loop on its own port, beside the standard health and reflection
services. Importing this module imports grpc: the server imports it only when
``grpc_port`` is not 0, so a bare install never needs the ``grpc`` extra.

Theory of operation
-------------------
Every edge publishes the same JSON payload, ``{"userId", "content",
"timestamp"}``, through :meth:`Node.publish`, so a ChatMessage sent here reaches
WebSocket, SSE, long-poll and Socket.IO subscribers, and theirs come back here.

A call that *receives* publications (SubscribeMessages, Chat) is one core
:class:`~kizuna.core.client.Client` whose :class:`GrpcTransport` turns the
native pushes the core queues into ChatMessages. It therefore gets the hub,
the connection limits, the byte-bounded queue with its slow-client rule
(3002), token expiry (3006) and the metrics of every other edge, and its
writer's ``await context.write`` is where HTTP/2 flow control pushes back.
Such a call goes through these steps:

1. Authenticate: metadata ``authorization: Bearer <JWT>`` → ``node.authenticate``.
2. Admit the client (``Client.accept``): node and user connection limits.
3. Subscribe each channel (``node.subscribe_client``); queue the recovered
   publications, then the buffered ones, with no await in between.
4. Send the initial metadata, one ``kizuna-subscription-bin`` entry per
   channel. Until then the transport holds the client's writer back, so the
   first thing a client sees is the confirmation and, with it, the position
   it can later recover from; what waits stays in the core's bounded queue.
5. The call ends when the peer cancels it (or half-closes Chat), or when the
   core closes the client: the disconnect code becomes a gRPC status plus
   trailing metadata ``kizuna-disconnect-code``.

SendMessage and UploadLogs receive nothing, so they are plain calls: no
Client, only the token, the channel rules and the node.

Errors
------
A refused request ends its call with a gRPC status and, in trailing metadata,
``kizuna-error-code`` (the code a native client would get in an error reply;
see :data:`ERROR_STATUS`). A failure never escapes a handler as an exception,
and one call's failure touches no other call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol, TypeAlias, TypeVar
from urllib.parse import unquote

import grpc
import orjson
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kizuna.core.client import Client
from kizuna.core.node import Node, Subscription
from kizuna.core.ports import Credentials
from kizuna.exceptions import AuthError, BrokerError, KizunaError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.protocol.handshake import token_from_request
from kizuna.protocol.messages import ClientInfo, StreamPosition
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc

__all__ = [
    "CHANNEL_KEY",
    "DISCONNECT_CODE_KEY",
    "ERROR_CODE_KEY",
    "ERROR_STATUS",
    "RECONNECT_DELAY_KEY",
    "SERVICE_NAME",
    "SUBSCRIPTION_KEY",
    "ChatServicer",
    "GrpcSettings",
    "GrpcTransport",
    "chat_message_from_push",
    "start_grpc_server",
    "stop_grpc_server",
]

TRANSPORT: Final = "grpc"
SERVICE_NAME: Final[str] = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name

CHANNEL_KEY: Final = "kizuna-channel"
"""Request metadata of Chat: one entry per channel the stream joins."""
SUBSCRIPTION_KEY: Final = "kizuna-subscription-bin"
"""Initial metadata: JSON ``{channel, offset, epoch, recovered}``, one entry per channel."""
CLIENT_ID_KEY: Final = "kizuna-client-id"
"""Initial metadata: the stream's connection id (``client_id`` of its own publications)."""
ERROR_CODE_KEY: Final = "kizuna-error-code"
"""Trailing metadata: the 1xx error code a refused call was answered with."""
DISCONNECT_CODE_KEY: Final = "kizuna-disconnect-code"
"""Trailing metadata: the 3xxx/4xxx code with which the server ended a stream."""
RECONNECT_DELAY_KEY: Final = "kizuna-reconnect-delay-ms"
"""Trailing metadata of a drained stream: the jittered delay advised before reconnecting."""

PEER_ENDED: Final = 1000
"""The code reported when the peer cancels or half-closes (WebSocket's normal closure)."""
MAX_LOG_ENTRIES: Final = 10_000
"""Entries one UploadLogs call may send; beyond it the call ends with RESOURCE_EXHAUSTED (106)."""
MAX_LOG_FIELDS: Final = 32
MAX_REJECTIONS: Final = 100
"""Rejections listed in an UploadSummary (all are counted)."""
LOG_LEVELS: Final = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
    "fatal": "critical",
}
"""The levels a LogEntry may name (any case), and the log method each one goes to."""

_INT64_MAX: Final = 2**63 - 1

ERROR_STATUS: Final[dict[int, grpc.StatusCode]] = {
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.UNKNOWN_CHANNEL: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.METHOD_NOT_FOUND: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.ALREADY_SUBSCRIBED: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.LIMIT_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_AVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.TOKEN_EXPIRED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.NOT_SUBSCRIBED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNRECOVERABLE_POSITION: grpc.StatusCode.OUT_OF_RANGE,
    ErrorCode.BROKER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.MESSAGE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""kizuna error code → the gRPC status a refused call ends with."""

DISCONNECT_STATUS: Final[dict[int, grpc.StatusCode]] = {
    DisconnectCode.SHUTDOWN: grpc.StatusCode.UNAVAILABLE,
    DisconnectCode.SLOW: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DisconnectCode.WRITE_ERROR: grpc.StatusCode.UNAVAILABLE,
    DisconnectCode.NO_PONG: grpc.StatusCode.UNAVAILABLE,
    DisconnectCode.INSUFFICIENT_STATE: grpc.StatusCode.ABORTED,
    DisconnectCode.TOKEN_EXPIRED: grpc.StatusCode.UNAUTHENTICATED,
    DisconnectCode.CONNECT_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    DisconnectCode.SERVER_ERROR: grpc.StatusCode.UNAVAILABLE,
    DisconnectCode.CONNECTION_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DisconnectCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    DisconnectCode.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    DisconnectCode.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    DisconnectCode.MESSAGE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DisconnectCode.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""kizuna disconnect code → the gRPC status a stream ends with when the server closes it."""

_T = TypeVar("_T")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class GrpcSettings(Protocol):
    """What the gRPC edge reads from the server's Config (the core's options come from the node)."""

    @property
    def host(self) -> str: ...

    @property
    def grpc_port(self) -> int: ...


class _Disconnected(KizunaError):
    """The core closed a stream's client with ``code``; the call ends with its status."""

    def __init__(self, code: int, reason: str, reconnect_delay_ms: int | None = None) -> None:
        self.code = code
        self.reason = reason
        self.reconnect_delay_ms = reconnect_delay_ms
        super().__init__(f"{code} {reason}")


# --- conversions -----------------------------------------------------------------------------


def chat_payload(user: str, content: str, timestamp: int) -> bytes:
    """The publication data every edge publishes for a chat message."""
    return orjson.dumps({"userId": user, "content": content, "timestamp": timestamp})


def chat_message_from_push(push: dict[str, Any]) -> chat_pb2.ChatMessage:
    """The ChatMessage for a native ``pub`` push (decoded).

    The user is the publisher's token subject (``info.user``); a publication made
    without a connection (the HTTP API) may name one in ``data.userId``. Data that
    is not a chat message reaches gRPC clients whole, as JSON text in ``content``.
    """
    data = push.get("data")
    info = push.get("info") or {}
    chat = data if isinstance(data, dict) else {}
    content = chat.get("content")
    user = info.get("user") or chat.get("userId")
    timestamp = chat.get("timestamp")
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        timestamp = 0
    return chat_pb2.ChatMessage(
        user_id=user if isinstance(user, str) else "",
        content=content if isinstance(content, str) else orjson.dumps(data).decode(),
        timestamp=int(timestamp) if 0 <= timestamp <= _INT64_MAX else 0,
        channel=push.get("channel", ""),
        offset=push.get("offset", 0),
        epoch=push.get("epoch", ""),
        client_id=info.get("client", ""),
    )


def _subscription_entry(sub: Subscription) -> tuple[str, bytes]:
    position = sub.position
    entry = {
        "channel": sub.channel,
        "offset": position.offset if position else 0,
        "epoch": position.epoch if position else "",
        "recovered": sub.recovered,
    }
    return SUBSCRIPTION_KEY, orjson.dumps(entry)


def _check_channel(channel: str, what: str = "channel") -> str:
    if not channel:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} is required")
    if len(channel) > codec.MAX_CHANNEL_LENGTH:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{what} longer than {codec.MAX_CHANNEL_LENGTH} characters"
        )
    return channel


def _log_entry_problem(entry: chat_pb2.LogEntry, max_size: int) -> str | None:
    """Why ``entry`` cannot be logged, or None when it can."""
    if entry.level.lower() not in LOG_LEVELS:
        return f"unknown level {entry.level!r}"
    if not entry.message.strip():
        return "message is required"
    if len(entry.message.encode()) > max_size:
        return f"message longer than {max_size} bytes"
    if entry.timestamp < 0:
        return "timestamp must not be negative"
    if len(entry.fields) > MAX_LOG_FIELDS:
        return f"more than {MAX_LOG_FIELDS} fields"
    return None


def _metadata(context: Context, key: str) -> list[str]:
    return [str(v) for k, v in context.invocation_metadata() or () if k == key]


def remote_addr(peer: str) -> str:
    """gRPC's peer (``ipv4:1.2.3.4:5``, ``ipv6:%5B::1%5D:5``) as the other edges write it.

    ``host:port``, bracketless, so that per-IP limits count a client the same
    whichever transport it uses; '' for peers without an address (unix sockets).
    """
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host, _, port = unquote(address).rpartition(":")
    return f"{host.strip('[]')}:{port}"


# --- transport -------------------------------------------------------------------------------


class GrpcTransport:
    """Transport port over one streaming call: native pushes in, ChatMessages out.

    ``write`` waits until :meth:`open` has sent the initial metadata (see step 4
    in the module docstring); ``close`` records the disconnect code, which the
    call's handler turns into the call's status. Join and leave pushes have no
    ChatMessage form and are dropped; a ``disconnect`` push's reconnect advice
    is kept for the trailing metadata.
    """

    __slots__ = ("_context", "_open", "ended", "reconnect_delay_ms")

    name = TRANSPORT

    def __init__(self, context: Context) -> None:
        self._context = context
        self._open = asyncio.Event()
        self.ended: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.reconnect_delay_ms: int | None = None

    async def open(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        await self._context.send_initial_metadata(metadata)
        self._open.set()

    async def write(self, frame: bytes) -> None:
        await self._open.wait()
        for line in frame.split(b"\n"):
            if self.ended.done():
                return
            push = orjson.loads(line)
            kind = push.get("push")
            if kind == "pub":
                await self._context.write(chat_message_from_push(push))
            elif kind == "disconnect" and isinstance(push.get("delay_ms"), int):
                self.reconnect_delay_ms = push["delay_ms"]

    async def close(self, code: int, reason: str) -> None:
        self.release(code, reason)

    def disconnected(self) -> _Disconnected:
        """How the core ended this stream (only once ``ended`` is done)."""
        code, reason = self.ended.result()
        return _Disconnected(code, reason, self.reconnect_delay_ms)

    def release(self, code: int, reason: str) -> None:
        """End the transport: a waiting writer returns, nothing more is written."""
        if not self.ended.done():
            self.ended.set_result((code, reason))
        self._open.set()


# --- the service -----------------------------------------------------------------------------


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """ChatService on a Node. Each method ends its call with a status, never an exception."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # structlog directly: edges do not import observability/ (one layer), and
        # configure_logging() there formats every structlog logger the same way.
        self._log = structlog.get_logger("kizuna.grpc")
        self._client_log = structlog.get_logger("kizuna.client")

    # --- 1. unary ---

    async def SendMessage(
        self, request: chat_pb2.ChatMessage, context: Context
    ) -> chat_pb2.MessageResponse:
        try:
            credentials = await self._credentials(context)
            info = ClientInfo(credentials.user if credentials else "", secrets.token_hex(8))
            return await self._timed("publish", self._publish(request, credentials, info, ""))
        except Exception as exc:
            await self._abort(context, exc)

    # --- 2. server streaming ---

    async def SubscribeMessages(  # type: ignore[override]  # writes with context.write
        self, request: chat_pb2.SubscriptionRequest, context: Context
    ) -> None:
        client: Client | None = None
        try:
            channels = [_check_channel(c, "channels[]") for c in request.channels]
            if not channels:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "channels: name at least one")
            since = {}
            for channel, position in request.since.items():
                if channel not in channels:
                    raise ProtocolError(
                        ErrorCode.BAD_REQUEST, f"since: {channel!r} not in channels"
                    )
                since[channel] = StreamPosition(position.offset, position.epoch)
            client = await self._open_stream(context, channels, since)
            assert isinstance(client.transport, GrpcTransport)
            await client.transport.ended
            raise client.transport.disconnected()
        except Exception as exc:
            await self._abort(context, exc)
        finally:
            if client is not None:
                _end_stream(client)

    # --- 3. client streaming ---

    async def UploadLogs(
        self, request_iterator: AsyncIterator[chat_pb2.LogEntry], context: Context
    ) -> chat_pb2.UploadSummary:
        try:
            credentials = await self._credentials(context)
            if credentials is None:
                raise AuthError(ErrorCode.UNAUTHORIZED, "uploading logs needs a token")
            return await self._upload_logs(request_iterator, credentials, context.peer())
        except Exception as exc:
            await self._abort(context, exc)

    async def _upload_logs(
        self, entries: AsyncIterator[chat_pb2.LogEntry], credentials: Credentials, peer: str
    ) -> chat_pb2.UploadSummary:
        """Validate each entry and log the good ones at their own level through structlog."""
        log = self._client_log.bind(transport=TRANSPORT, user=credentials.user, peer=peer)
        max_size = self.node.options.max_message_size
        summary = chat_pb2.UploadSummary()
        index = 0
        async for entry in entries:
            if index >= MAX_LOG_ENTRIES:
                raise ProtocolError(
                    ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_LOG_ENTRIES} entries per upload"
                )
            problem = _log_entry_problem(entry, max_size)
            if problem is None:
                method = getattr(log, LOG_LEVELS[entry.level.lower()])
                method(
                    "client_log",
                    client_message=entry.message,
                    client_timestamp=entry.timestamp or None,
                    fields=dict(entry.fields),
                )
                summary.accepted += 1
            else:
                summary.rejected += 1
                if len(summary.rejections) < MAX_REJECTIONS:
                    summary.rejections.add(index=index, reason=problem)
            index += 1
        return summary

    # --- 4. bidirectional streaming ---

    async def Chat(  # type: ignore[override]  # writes with context.write
        self, request_iterator: AsyncIterator[chat_pb2.ChatMessage], context: Context
    ) -> None:
        client: Client | None = None
        reader: asyncio.Task[None] | None = None
        try:
            channels = [_check_channel(c, CHANNEL_KEY) for c in _metadata(context, CHANNEL_KEY)]
            client = await self._open_stream(context, channels, {})
            assert isinstance(client.transport, GrpcTransport)
            ended = client.transport.ended
            default = channels[0] if len(channels) == 1 else ""
            reader = asyncio.ensure_future(self._publish_each(request_iterator, client, default))
            await asyncio.wait((reader, ended), return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                raise client.transport.disconnected()
            reader.result()  # a refused message ends the call with its status
            await client.flush()  # half-closed: write what is queued, then end with OK
        except Exception as exc:
            if client is not None and isinstance(exc, ProtocolError):
                await client.flush()  # what was published before the refusal still arrives
            await self._abort(context, exc)
        finally:
            if reader is not None:
                if not reader.done():
                    reader.cancel()
                # Collect its end (often the abort seen from the reading side), so that
                # nothing is left as "exception never retrieved".
                with contextlib.suppress(BaseException):
                    await reader
            if client is not None:
                _end_stream(client)

    async def _publish_each(
        self, messages: AsyncIterator[chat_pb2.ChatMessage], client: Client, default: str
    ) -> None:
        """Publish every message the peer sends, in order, until it half-closes."""
        async for message in messages:
            if not client.allow_command():  # a stream has no per-message reply: end it
                raise ProtocolError(ErrorCode.TOO_MANY_REQUESTS, "command rate exceeded")
            await self._timed(
                "publish", self._publish(message, client.credentials, client.info, default)
            )

    # --- shared steps ---

    async def _credentials(self, context: Context) -> Credentials | None:
        """The caller's verified token; None (anonymous) only where a namespace allows it."""
        values = _metadata(context, "authorization")
        if not values:
            if self.node.anonymous_allowed:
                return None
            self.node.events.auth_failed(TRANSPORT, ErrorCode.UNAUTHORIZED)
            raise AuthError(ErrorCode.UNAUTHORIZED, "token required: authorization: Bearer <JWT>")
        token = token_from_request({"authorization": values[0]}, {})
        if token is None:
            self.node.events.auth_failed(TRANSPORT, ErrorCode.UNAUTHORIZED)
            raise AuthError(ErrorCode.UNAUTHORIZED, "authorization must be 'Bearer <JWT>'")
        return await self.node.authenticate(token, TRANSPORT)

    async def _open_stream(
        self, context: Context, channels: list[str], since: dict[str, StreamPosition]
    ) -> Client:
        """Steps 1–4 of the module docstring; returns the admitted, subscribed client."""
        try:
            credentials = await self._credentials(context)
        except AuthError as exc:
            self.node.events.connection_rejected(TRANSPORT, exc.code)
            raise
        transport = GrpcTransport(context)
        client = Client(
            self.node, transport, credentials=credentials, remote_addr=remote_addr(context.peer())
        )
        if not await client.accept(credentials):
            transport.release(DisconnectCode.SERVER_ERROR, "refused")  # accept closed it already
            raise transport.disconnected()
        metadata: list[tuple[str, str | bytes]] = [(CLIENT_ID_KEY, client.id)]
        try:
            for channel in channels:
                sub = await self._timed(
                    "subscribe", self.node.subscribe_client(client, channel, since.get(channel))
                )
                # No await from here to the next subscribe: live publications follow these.
                epoch = sub.position.epoch if sub.position else ""
                for pub in sub.publications:
                    client.enqueue(codec.encode_publication_push(channel, pub, epoch))
                for data in sub.followups:
                    client.enqueue(data)
                metadata.append(_subscription_entry(sub))
            await transport.open(metadata)
        except BaseException:
            _end_stream(client)
            raise
        return client

    async def _publish(
        self,
        message: chat_pb2.ChatMessage,
        credentials: Credentials | None,
        info: ClientInfo,
        default_channel: str,
    ) -> chat_pb2.MessageResponse:
        """Check one ChatMessage against the rules and publish it on the bus."""
        channel = _check_channel(message.channel or default_channel)
        if not message.content:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "content is required")
        if message.timestamp < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "timestamp must not be negative")
        user = credentials.user if credentials else ""
        if message.user_id and message.user_id != user:
            raise ProtocolError(ErrorCode.PERMISSION_DENIED, "user_id must be the token's subject")
        options = self.node.rules.check_publish(channel, credentials)
        timestamp = message.timestamp or int(time.time() * 1000)
        data = chat_payload(user, message.content, timestamp)
        if len(data) > self.node.options.max_message_size:
            raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE)
        position = await self.node.publish(channel, data, info=info, options=options)
        return chat_pb2.MessageResponse(
            channel=channel, offset=position.offset, epoch=position.epoch, timestamp=timestamp
        )

    async def _timed(self, method: str, operation: Awaitable[_T]) -> _T:
        """Await ``operation`` and report it as a command, like a native client's."""
        started = time.perf_counter()
        error = 0
        try:
            return await operation
        except ProtocolError as exc:
            error = int(exc.code)
            raise
        except BrokerError:
            error = int(ErrorCode.BROKER_UNAVAILABLE)
            raise
        finally:
            self.node.events.command_handled(
                TRANSPORT, method, time.perf_counter() - started, error
            )

    async def _abort(self, context: Context, exc: Exception) -> NoReturn:
        """End the call with the status that ``exc`` stands for."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, _Disconnected):
            status = DISCONNECT_STATUS.get(exc.code, grpc.StatusCode.UNAVAILABLE)
            trailing = [(DISCONNECT_CODE_KEY, str(exc.code))]
            if exc.reconnect_delay_ms is not None:
                trailing.append((RECONNECT_DELAY_KEY, str(exc.reconnect_delay_ms)))
            await context.abort(status, exc.reason, tuple(trailing))
        if isinstance(exc, ProtocolError):
            error, message = exc.code, exc.message
        elif isinstance(exc, BrokerError):
            error = ErrorCode.BROKER_UNAVAILABLE
            message = error.description
        else:
            self._log.exception("grpc_handler_failed")
            error = ErrorCode.INTERNAL
            message = error.description
        status = ERROR_STATUS.get(error, grpc.StatusCode.INTERNAL)
        await context.abort(status, message, ((ERROR_CODE_KEY, str(int(error))),))


def _end_stream(client: Client) -> None:
    """The call is over: release the transport and forget the client (no-op if closed)."""
    transport = client.transport
    if isinstance(transport, GrpcTransport):
        transport.release(PEER_ENDED, "call ended")
    client.transport_closed(PEER_ENDED)


# --- the server ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Edge:
    node: Node
    health: Any  # grpc_health.v1.health.aio.HealthServicer (its stubs know no aio)


_EDGES: dict[grpc.aio.Server, _Edge] = {}


async def start_grpc_server(node: Node, settings: GrpcSettings) -> grpc.aio.Server:
    """Serve ChatService, health and reflection on ``settings.grpc_port`` in this event loop.

    Call after the node started; stop with :func:`stop_grpc_server`. Message
    size and keepalive follow the node's options: inbound messages up to twice
    ``max_message_size`` reach the service (which answers 114 beyond the limit
    itself, as the WebSocket edge does); gRPC refuses larger ones.
    """
    options = node.options
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 2 * options.max_message_size),
            ("grpc.keepalive_time_ms", int(options.ping_interval * 1000)),
            ("grpc.keepalive_timeout_ms", int(options.ping_timeout * 1000)),
            # Idle subscriptions carry no data; keep pinging them anyway.
            ("grpc.http2.max_pings_without_data", 0),
            # grpc enables SO_REUSEPORT by default: a second server would share the port silently.
            ("grpc.so_reuseport", 0),
        ]
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(node), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    host = settings.host
    address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise KizunaError(f"gRPC cannot listen on {address}: {exc}") from exc
    await server.start()
    _EDGES[server] = _Edge(node, health_servicer)
    return server


async def stop_grpc_server(server: grpc.aio.Server, grace: float | None = 5.0) -> None:
    """Report NOT_SERVING, end every stream with 3001 (reconnect elsewhere), then stop.

    Streams are closed before ``server.stop`` so that they end with UNAVAILABLE and
    ``kizuna-disconnect-code: 3001`` after writing what was queued for them, rather
    than being cancelled once ``grace`` runs out; unary calls get ``grace`` to finish.
    """
    edge = _EDGES.pop(server, None)
    if edge is not None:
        await edge.health.enter_graceful_shutdown()
        streams = [c for c in edge.node.clients.values() if c.transport.name == TRANSPORT]
        await asyncio.gather(*(c.close(DisconnectCode.SHUTDOWN, flush=True) for c in streams))
    await server.stop(grace)
