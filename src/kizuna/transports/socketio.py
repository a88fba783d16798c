"""Socket.IO at ``/socket.io/`` (python-socketio), on kizuna's channel bus.

The guide's chat over Socket.IO, with every Socket.IO namespace connection a
kizuna :class:`~kizuna.core.client.Client` (transport ``socketio``, metrics
label ``/chat`` or ``/notifications``) and every room a channel, so that
native, SSE, long-poll, gRPC and Socket.IO clients of one room see each
other's messages, on this node and on every node sharing the broker.

Namespaces: one per kizuna namespace (``/chat`` ↔ ``chat``,
``/notifications`` ↔ ``notifications``), with the same rules.

Connect, step by step
---------------------
1. Engine.IO checks the ``Origin`` with kizuna's rule
   (:func:`~kizuna.protocol.handshake.origin_allowed`), before any packet.
2. The namespace connect takes the token from ``auth.token`` (the guide's
   way), else from the handshake (``Authorization: Bearer``, ``?token=``,
   cookie). A bad token is refused with ``connect_error`` whose message is
   ``unauthorized`` and whose ``data`` is ``{code, reason}`` (101, 109, ...).
3. The client then runs the core's connect command, so a missing token, the
   connection limits and token expiry behave exactly as on every transport;
   a refusal there is a ``connect_error`` too (``unauthorized`` for 4002,
   else the disconnect reason, with ``data.code``).

Events (each answers its acknowledgement, if the client asked for one)
----------------------------------------------------------------------
* ``joinRoom(roomId)`` → subscribe to ``<ns>:<roomId>``; the room then hears
  ``userJoined {userId, room}`` (the node's join event, from any node).
  Ack ``{ok: true, room, channel, ...subscribe result}``.
* ``message({roomId, content})`` → publish ``{userId, content, timestamp}``
  to ``<ns>:<roomId>`` (what native subscribers receive as ``data``); the
  room hears ``newMessage(data, {room, offset})``. Ack ``{ok: true, room,
  offset?, epoch?}``.
* ``leaveRoom(roomId)`` → unsubscribe; ack ``{ok: true, room}``.
* Anything else, or a payload of the wrong type: ``{ok: false, error: {code,
  message}}`` with kizuna's numbered code (104, 107, ...). The connection
  stays; no event can crash the server or disturb other clients.

Handlers run one at a time per connection (``async_handlers=False``), in the
order the client sent them, as native commands do: two messages from one
client are published in the order it sent them.

Limits and failures (the native rules, in Socket.IO's terms)
------------------------------------------------------------
* Every event draws on the command-rate bucket: 111 in the ack, then 4005.
* An Engine.IO connection with no namespace connected for ``connect_timeout``
  is closed (3007): it would hold a socket no limit counts.
* A packet python-socketio cannot parse closes the connection (4001), as
  socket.io's reference server does.
* An outbox over ``client_queue_max_bytes`` closes the connection (3002), or,
  in a drop-oldest namespace, sheds old publications first.
* How a disconnect code reaches socket.io-client (and so whether it
  reconnects by itself) is in socketio_manager.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import engineio  # type: ignore[import-untyped]
import orjson
import socketio  # type: ignore[import-untyped]
from socketio.exceptions import ConnectionRefusedError as Refused  # type: ignore[import-untyped]

from kizuna.core.client import ClientState
from kizuna.core.node import Node
from kizuna.exceptions import AuthError, BrokerError, ProtocolError
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.protocol.handshake import origin_allowed, parse_query, token_from_request
from kizuna.protocol.messages import Connect
from kizuna.transports.common import TOKEN_COOKIE, HandshakeSettings, scope_headers
from kizuna.transports.socketio_manager import (
    TRANSPORT,
    KizunaManager,
    Outbox,
    SocketIOClient,
    SocketIOTransport,
    close_engine_socket,
)
from kizuna.transports.socketio_packets import (
    PushTranslator,
    error_ack,
    room_channel,
    socketio_namespace,
)
from kizuna.transports.socketio_websocket import EngineWebSocket

__all__ = ["SOCKETIO_PATH", "UNAUTHORIZED", "SocketIOServer", "socketio_app"]

SOCKETIO_PATH = "socket.io"
UNAUTHORIZED = "unauthorized"
"""The ``connect_error`` message for a refused token (the guide's clients test for it)."""

_LOG = logging.getLogger("kizuna.socketio")

# Why a peer-side disconnect happened (python-engineio's reasons) → the code metrics record.
_REASON_CODES: dict[str, int] = {
    engineio.AsyncServer.reason.CLIENT_DISCONNECT: 1000,
    engineio.AsyncServer.reason.SERVER_DISCONNECT: 1000,
    engineio.AsyncServer.reason.TRANSPORT_CLOSE: 1001,
    engineio.AsyncServer.reason.TRANSPORT_ERROR: 1006,
    engineio.AsyncServer.reason.PING_TIMEOUT: int(DisconnectCode.NO_PONG),
}


def socketio_app(node: Node, settings: HandshakeSettings) -> Any:
    """The ASGI app to mount at ``/socket.io/``: python-socketio's ``ASGIApp`` over the node.

    It answers only paths under ``/socket.io/`` (404 elsewhere) and leaves the
    lifespan to the application that mounts it. ``app.engineio_server`` is the
    :class:`SocketIOServer`; awaiting its ``shutdown()`` stops python-engineio's
    client monitor.
    """
    if _LOG.level == logging.NOTSET:
        # python-socketio logs every event at INFO and some peer mistakes (an ack for nothing,
        # an event for a namespace never joined) at WARNING: lines per packet, which a peer
        # controls. kizuna logs per connection, through the node's events.
        _LOG.setLevel(logging.ERROR)
    server = SocketIOServer(node, settings)
    return socketio.ASGIApp(server, other_asgi_app=None, socketio_path=SOCKETIO_PATH)


class _EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server, with an :class:`Outbox` as each connection's queue.

    Its WebSocket wrapper is :class:`EngineWebSocket`, which writes packets
    without the writer task when that keeps their order (socketio_websocket.py).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A copy: python-engineio's driver table is shared by every server in the process.
        self._async: dict[str, Any] = {**self._async, "websocket": EngineWebSocket}

    def create_queue(self, *args: Any, **kwargs: Any) -> Outbox:
        return Outbox()


class SocketIOServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with kizuna's manager, limits, Origin rule and namespaces."""

    def __init__(self, node: Node, settings: HandshakeSettings) -> None:
        allowed = tuple(settings.allowed_origins)

        def origin_ok(origin: str | None, environ: dict[str, Any]) -> bool:
            return origin_allowed(origin, environ.get("HTTP_HOST"), allowed)

        options = node.options
        namespaces = [socketio_namespace(ns) for ns in node.rules.namespaces]
        super().__init__(
            client_manager=KizunaManager(node),
            async_mode="asgi",
            namespaces=namespaces,
            async_handlers=False,
            logger=_LOG,
            engineio_logger=_LOG,
            cors_allowed_origins=origin_ok,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            max_http_buffer_size=options.max_message_size,
            # Compressing each polling response would be work per recipient; off, like
            # permessage-deflate on the native WebSocket.
            http_compression=False,
        )
        self.node = node
        self.translator = PushTranslator()
        for namespace in namespaces:
            self.register_namespace(RoomNamespace(namespace))

    def _engineio_server_class(self) -> type[_EngineServer]:
        return _EngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        self.watch_idle(eio_sid)

    def watch_idle(self, eio_sid: str) -> None:
        """Close the Engine.IO connection if no namespace is connected on it in time.

        The native rule (3007 after ``connect_timeout`` without a connect command):
        an Engine.IO connection that never joins a namespace, or has left them all,
        holds a socket without being a client the node counts or limits.
        """
        loop = asyncio.get_running_loop()
        loop.call_later(self.node.options.connect_timeout, self._idle_deadline, eio_sid)

    def _idle_deadline(self, eio_sid: str) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing or socket.queue.clients:
            return
        self.node.events.connection_rejected(TRANSPORT, DisconnectCode.CONNECT_TIMEOUT)
        self.node.spawn(self._close_connection(eio_sid, DisconnectCode.CONNECT_TIMEOUT))

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception:
            # python-socketio could not make a packet of it (every event handler here answers
            # its own errors): the peer broke the protocol. socket.io's reference server closes
            # such a connection, as kizuna closes a native one with 4001 — and a log line per
            # bad packet would let any peer flood the logs.
            await self._close_connection(eio_sid, DisconnectCode.BAD_REQUEST)

    async def _close_connection(self, eio_sid: str, code: DisconnectCode) -> None:
        """End one Engine.IO connection; every namespace on it closes with ``code``."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return
        socket.queue.closing_code = int(code)
        await close_engine_socket(socket, self.reason.SERVER_DISCONNECT)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        socket = self.eio.sockets.get(eio_sid)
        if reason == self.reason.CLIENT_DISCONNECT and socket is not None and not socket.upgraded:
            # A polling client that closed leaves its last long-poll GET waiting on the queue
            # for ping_interval + ping_timeout (python-engineio puts nothing there on a
            # client-side close), which also holds a graceful shutdown for 10 s. None is
            # python-engineio's own "nothing more" marker: that GET ends with an empty body.
            socket.queue.put_nowait(None)


EventHandler = Callable[["RoomNamespace", SocketIOClient, list[Any]], Awaitable[dict[str, Any]]]


class RoomNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """The guide's events for one namespace, answered with kizuna's codes."""

    server: SocketIOServer

    async def trigger_event(self, event: str, *args: Any) -> Any:
        # python-socketio calls this for every event of the namespace; dispatching here
        # (instead of on_<event> methods) keeps a wrong argument count from raising TypeError.
        if event == "connect":
            await self._connect(*args)
            return None
        if event == "disconnect":
            self._disconnect(*args)
            return None
        return await self._event(event, args[0], list(args[1:]))

    @property
    def _manager(self) -> KizunaManager:
        manager: KizunaManager = self.server.manager
        return manager

    # --- connect / disconnect ------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        server = self.server
        node = server.node
        eio_sid = self._manager.eio_sid_from_sid(sid, self.namespace)
        socket = server.eio.sockets.get(eio_sid)
        if socket is None or not isinstance(socket.queue, Outbox):  # pragma: no cover
            raise Refused("connection gone")
        scope: dict[str, Any] = environ.get("asgi.scope", {})
        token = _token(scope, auth)
        credentials = None
        if token is not None:
            try:
                credentials = await node.authenticate(token, TRANSPORT)
            except AuthError as exc:
                node.events.connection_rejected(TRANSPORT, exc.code)
                raise Refused(UNAUTHORIZED, {"code": int(exc.code), "reason": exc.message}) from exc
        client_addr = scope.get("client")
        transport = SocketIOTransport(server, sid, self.namespace, socket.queue, server.translator)
        client = SocketIOClient(
            node,
            transport,
            credentials=credentials,
            remote_addr=f"{client_addr[0]}:{client_addr[1]}" if client_addr else "",
        )
        # The core's connect: anonymous rule, connection limits, token expiry, metrics.
        await client.handle_command(Connect(1, None, None))
        if client.state is not ClientState.CONNECTED:
            code, reason = transport.refusal or (int(DisconnectCode.SERVER_ERROR), "refused")
            message = UNAUTHORIZED if code == DisconnectCode.UNAUTHORIZED else reason
            raise Refused(message, {"code": code, "reason": reason})
        transport.accepted = True
        socket.queue.clients.append(client)
        self._manager.clients[sid] = client

    def _disconnect(self, sid: str, reason: str = "") -> None:
        client = self._manager.clients.pop(sid, None)
        if client is None:
            return
        outbox = client.sio.outbox
        if client in outbox.clients:
            outbox.clients.remove(client)
        code = outbox.closing_code or _REASON_CODES.get(reason, 1006)
        client.transport_closed(code)
        if not outbox.clients and outbox.closing_code is None:
            eio_sid = self._manager.eio_sid_from_sid(sid, self.namespace)
            if eio_sid is not None:
                self.server.watch_idle(eio_sid)

    # --- events --------------------------------------------------------------------------

    async def _event(self, event: Any, sid: str, args: list[Any]) -> dict[str, Any]:
        """Run one event; always returns the acknowledgement (python-socketio sends it if asked)."""
        started = time.perf_counter()
        entry = _EVENTS.get(event) if isinstance(event, str) else None
        method, handler = entry if entry is not None else ("unknown", None)
        node = self.server.node
        error = 0
        try:
            if handler is None:
                code = ErrorCode.METHOD_NOT_FOUND
                raise ProtocolError(code, f"{code.description}: {event!r}")
            client = self._manager.clients.get(sid)
            if client is None or client.state is not ClientState.CONNECTED:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "not connected")
            if not client.allow_command():  # the command-rate bucket every edge shares
                if client.refused_in_a_row > node.options.command_burst:
                    await client.close(DisconnectCode.TOO_MANY_REQUESTS)
                raise ProtocolError(ErrorCode.TOO_MANY_REQUESTS)
            ack = {"ok": True, **await handler(self, client, args)}
        except ProtocolError as exc:
            error = exc.code
            ack = error_ack(exc.code, exc.message)
        except BrokerError:
            error = ErrorCode.BROKER_UNAVAILABLE
            ack = error_ack(ErrorCode.BROKER_UNAVAILABLE)
        except Exception:
            _LOG.exception("socketio event %s failed", method)
            error = ErrorCode.INTERNAL
            ack = error_ack(ErrorCode.INTERNAL)
        node.events.command_handled(TRANSPORT, method, time.perf_counter() - started, error)
        return ack

    async def _join_room(self, client: SocketIOClient, args: list[Any]) -> dict[str, Any]:
        room = _room_argument("joinRoom", args)
        result = await self._manager.join(client, room)
        return {"room": room, "channel": room_channel(self.namespace, room), **result}

    async def _leave_room(self, client: SocketIOClient, args: list[Any]) -> dict[str, Any]:
        room = _room_argument("leaveRoom", args)
        await self._manager.leave(client, room)
        return {"room": room}

    async def _message(self, client: SocketIOClient, args: list[Any]) -> dict[str, Any]:
        if len(args) != 1 or not isinstance(args[0], dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "message takes one object {roomId, content}")
        room, content = args[0].get("roomId"), args[0].get("content")
        if not isinstance(room, str) or not room:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "roomId must be a non-empty string")
        if not isinstance(content, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "content must be a string")
        channel = room_channel(self.namespace, room)
        if channel is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "roomId is too long")
        node = client.node
        options = node.rules.check_publish(channel, client.credentials)
        data = orjson.dumps(
            {
                "userId": client.user or client.id,
                "content": content,
                "timestamp": int(time.time() * 1000),
            }
        )
        position = await node.publish(channel, data, info=client.info, options=options)
        if not position.offset:
            return {"room": room}
        return {"room": room, "offset": position.offset, "epoch": position.epoch}


_EVENTS: dict[str, tuple[str, EventHandler]] = {
    # event → (the kizuna method it is, for metrics labels; handler)
    "joinRoom": ("subscribe", RoomNamespace._join_room),
    "message": ("publish", RoomNamespace._message),
    "leaveRoom": ("unsubscribe", RoomNamespace._leave_room),
}


def _room_argument(event: str, args: list[Any]) -> str:
    if len(args) != 1 or not isinstance(args[0], str) or not args[0]:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{event} takes one argument: the room id, a non-empty string"
        )
    room: str = args[0]
    return room


def _token(scope: dict[str, Any], auth: Any) -> str | None:
    """``auth.token`` if the client sent one, else a token carried by the handshake request."""
    if isinstance(auth, dict) and "token" in auth:
        token = auth["token"]
        return token if isinstance(token, str) else ""  # "" fails verification: unauthorized
    return token_from_request(
        scope_headers(scope), parse_query(scope.get("query_string", b"")), TOKEN_COOKIE
    )
