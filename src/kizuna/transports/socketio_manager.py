"""python-socketio bridged to kizuna's hub: rooms are channels, sockets are Clients.

Pieces
------
* :class:`Outbox` — the outbound queue of one Engine.IO connection (python-
  engineio creates it through ``create_queue``), counted in bytes so that a
  connection that falls behind is found, as a native one is, by
  ``client_queue_max_bytes``. Every namespace multiplexed on the connection
  writes into it. On an upgraded WebSocket whose writer is idle, a packet
  put into an empty outbox is written at once instead (socketio_websocket.py).
* :class:`SocketIOClient` — one Socket.IO namespace connection as a kizuna
  :class:`~kizuna.core.client.Client`: registered on the node (limits,
  metrics, presence), subscribed to channels. Its :meth:`~SocketIOClient.enqueue`
  is what the hub calls during fan-out; it puts the shared Engine.IO packet
  (see socketio_packets.py: translated once per publication) straight into the
  outbox. No per-recipient encode, task or await.
* :class:`SocketIOTransport` — the core's Transport port: how a kizuna
  disconnect code ends a Socket.IO connection.
* :class:`KizunaManager` — python-socketio's client manager over the node:
  entering room ``r`` subscribes the client to channel ``<ns>:r`` through
  :meth:`Node.subscribe_client`, so this node subscribes to the broker only for
  rooms with local members, and a publication from any node and any transport
  reaches the room. Sid rooms and python-socketio's own room bookkeeping are
  kept as the base class keeps them; ``emit`` to a named room stays local to
  this node (cross-node room traffic is channel publications, not emits).

Disconnect codes and Socket.IO
------------------------------
The server first sends ``serverDisconnect {code, reason, reconnect}``, then:

* reconnect allowed (3xxx): closes the Engine.IO connection. socket.io-client
  sees "transport close" and reconnects with its own backoff — kizuna's rule
  expressed the way Socket.IO clients already follow. Other namespaces
  multiplexed on that connection close with the same code.
* terminal (4xxx): sends the namespace DISCONNECT packet ("io server
  disconnect"), after which socket.io-client does not reconnect by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import socketio  # type: ignore[import-untyped]

from kizuna.core.client import Client, ClientState
from kizuna.core.node import Node
from kizuna.core.ports import Credentials
from kizuna.exceptions import ProtocolError
from kizuna.protocol.codes import DisconnectCode, ErrorCode, reconnect_allowed
from kizuna.transports.socketio_packets import (
    SERVER_DISCONNECT,
    DroppablePacket,
    EioPacket,
    PushTranslator,
    event_packet,
    room_channel,
)

if TYPE_CHECKING:
    from kizuna.transports.socketio_websocket import DirectWriter

__all__ = ["TRANSPORT", "KizunaManager", "Outbox", "SocketIOClient", "SocketIOTransport"]

TRANSPORT = "socketio"
"""The transport label of Socket.IO connections in metrics and logs."""

CLOSE_DRAIN_TIMEOUT = 0.5
"""Seconds a close waits for the client to be handed its last packets."""


def _packet_size(pkt: EioPacket | None) -> int:
    if pkt is None:  # python-engineio's "wake the writer and stop" sentinel
        return 0
    if pkt.binary:
        return len(pkt.data)
    # Text packets: encode() caches, so this is the same string the writer will send.
    return len(pkt.encode())


class Outbox(asyncio.Queue[Any]):
    """One Engine.IO connection's outbound packets, and the kizuna clients writing into it."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0
        """Bytes of the packets waiting; python-engineio's writer takes them out."""
        self.clients: list[SocketIOClient] = []
        """The namespace connections multiplexed on this Engine.IO connection."""
        self.closing_code: int | None = None
        """Set when the server closes the whole connection; the code its clients close with."""
        self.direct: DirectWriter | None = None
        """Set while the connection has a WebSocket (socketio_websocket.py)."""
        self.waiting = 0
        """How many readers (the WebSocket writer task, a long-poll) wait in :meth:`get`."""

    def put_nowait(self, item: Any) -> None:
        """Queue ``item``, or write it at once if that cannot overtake anything.

        At once only when the outbox is empty and a reader waits in :meth:`get`:
        a reader suspended there has sent everything it took. Every put
        (python-engineio's ``send`` and ``put`` too) comes through here, so the
        order on the wire is the order of the calls.
        """
        direct = self.direct
        if (
            direct is not None
            and self.waiting
            and item is not None
            and self.empty()
            and direct.write(item)
        ):
            return
        super().put_nowait(item)

    async def get(self) -> Any:
        self.waiting += 1
        try:
            return await super().get()
        finally:
            self.waiting -= 1

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.nbytes += _packet_size(item)

    def _get(self) -> Any:
        item = super()._get()
        self.nbytes -= _packet_size(item)
        return item

    def discard(self) -> None:
        """Drop everything waiting (a slow connection's backlog), keeping join() accounting."""
        self._take_all()

    def shed(self, limit: int) -> int:
        """Drop droppable publications, oldest first, until at most ``limit`` bytes wait.

        The drop-oldest policy of core.client, for the Engine.IO queue: replies,
        acks and pings are never dropped. Returns how many packets went.
        """
        kept: list[Any] = []
        dropped = 0
        nbytes = self.nbytes
        for item in self._take_all():
            if nbytes > limit and isinstance(item, DroppablePacket):
                nbytes -= _packet_size(item)
                dropped += 1
            else:
                kept.append(item)
        for item in kept:
            super().put_nowait(item)  # back in the queue, in order, behind nothing
        return dropped

    def _take_all(self) -> list[Any]:
        items: list[Any] = []
        while True:
            try:
                items.append(self.get_nowait())
            except asyncio.QueueEmpty:
                return items
            self.task_done()


async def close_engine_socket(socket: Any, reason: str) -> None:
    """Close one Engine.IO connection from the server side, whatever the peer does.

    python-engineio's close queues the CLOSE packet and then relies on the peer
    to hang up; one that does not keeps its WebSocket until the ping timeout.
    On WebSocket, the ``None`` after it (python-engineio's own end-of-queue
    marker) makes the writer send the CLOSE and then close the socket. A
    long-poll session ends with the poll that takes the CLOSE. ``wait=False``:
    python-engineio would otherwise wait, without limit, for a peer that
    stopped reading.
    """
    await socket.close(wait=False, reason=reason)
    if socket.upgraded:
        socket.queue.put_nowait(None)


class SocketIOTransport:
    """The Transport port for one Socket.IO namespace connection."""

    __slots__ = (
        "_closed",
        "_server",
        "_translator",
        "accepted",
        "namespace",
        "outbox",
        "refusal",
        "sid",
    )

    name = TRANSPORT

    def __init__(
        self, server: Any, sid: str, namespace: str, outbox: Outbox, translator: PushTranslator
    ) -> None:
        self._server = server
        self._translator = translator
        self._closed = False
        self.sid = sid
        self.namespace = namespace
        self.outbox = outbox
        self.accepted = False
        """False while the namespace connect is being decided (a close then refuses it)."""
        self.refusal: tuple[int, str] | None = None

    def packet(self, data: bytes | memoryview) -> EioPacket | None:
        """The Engine.IO packet for one native message (shared by the room), or None."""
        return self._translator.translate(data)

    async def write(self, frame: bytes) -> None:
        # Not the fan-out path (SocketIOClient.enqueue queues packets itself); the port's
        # method, for a frame of newline-delimited native messages.
        for line in frame.split(b"\n"):
            pkt = self._translator.translate(line)
            if pkt is not None:
                self.outbox.put_nowait(pkt)

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.accepted:
            self.refusal = (code, reason)  # the connect handler turns it into connect_error
            return
        reconnect = reconnect_allowed(code)
        notice = event_packet(
            self.namespace,
            SERVER_DISCONNECT,
            {"code": code, "reason": reason, "reconnect": reconnect},
        )
        outbox = self.outbox
        slow = code == DisconnectCode.SLOW
        if slow:
            outbox.discard()
        outbox.put_nowait(notice)
        server = self._server
        if not reconnect:
            await server.disconnect(self.sid, namespace=self.namespace)
        else:
            eio_sid = server.manager.eio_sid_from_sid(self.sid, self.namespace)
            socket = server.eio.sockets.get(eio_sid) if eio_sid is not None else None
            if socket is None:
                return
            if not slow:
                # The notice must leave before the Engine.IO close: socket.io-client dispatches
                # events a tick later, and drops them if a close in the same poll came first.
                await self._drain()
            outbox.closing_code = code
            await close_engine_socket(socket, server.reason.SERVER_DISCONNECT)
        if not slow:
            # As a native close frame is sent before close() returns: on shutdown the
            # server closes its sockets right after.
            await self._drain()

    async def _drain(self) -> None:
        """Wait (briefly) until the writer or a long-poll has taken everything queued."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.join(), CLOSE_DRAIN_TIMEOUT)


class SocketIOClient(Client):
    """A kizuna Client whose outbound path is the Engine.IO connection's :class:`Outbox`."""

    __slots__ = ("sio",)

    def __init__(
        self,
        node: Node,
        transport: SocketIOTransport,
        *,
        credentials: Credentials | None,
        remote_addr: str,
    ) -> None:
        super().__init__(
            node,
            transport,
            credentials=credentials,
            remote_addr=remote_addr,
            namespace=transport.namespace,
        )
        self.sio = transport

    @property
    def sid(self) -> str:
        return self.sio.sid

    def enqueue(self, data: bytes) -> None:
        """The fan-out hot path: the shared Engine.IO packet into the outbox, nothing else."""
        if self.state is ClientState.CLOSED:
            return
        pkt = self.sio.packet(data)
        if pkt is None:
            return
        outbox = self.sio.outbox
        if outbox.nbytes > self.node.options.client_queue_max_bytes:
            self._overflow()
            return
        outbox.put_nowait(pkt)

    def enqueue_droppable(self, data: memoryview) -> None:
        """A publication of a drop-oldest namespace: a full outbox sheds old ones first."""
        if self.state is ClientState.CLOSED:
            return
        pkt = self.sio.packet(data)
        if pkt is None:
            return
        outbox = self.sio.outbox
        outbox.put_nowait(pkt)
        limit = self.node.options.client_queue_max_bytes
        if outbox.nbytes > limit:
            self.node.events.messages_dropped(TRANSPORT, outbox.shed(limit))
            if outbox.nbytes > limit:
                self._overflow()

    def _overflow(self) -> None:
        # The outbox is shared by every namespace on the connection: all of them are slow.
        outbox = self.sio.outbox
        outbox.discard()
        clients = list(outbox.clients)
        if self not in clients:
            clients.append(self)
        for client in clients:
            client.node.events.slow_client(TRANSPORT)
            client.close_soon(DisconnectCode.SLOW)

    @property
    def queued_bytes(self) -> int:
        # Reported by one client per connection, so the node-wide sum counts each byte once.
        clients = self.sio.outbox.clients
        return self.sio.outbox.nbytes if clients and clients[0] is self else 0


class KizunaManager(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's client manager, with named rooms kept as kizuna subscriptions."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self.clients: dict[str, SocketIOClient] = {}
        """Socket.IO sid → its kizuna client, while connected."""

    async def join(self, client: SocketIOClient, room: str) -> dict[str, Any]:
        """Subscribe ``client`` to the room's channel; returns the subscribe result."""
        channel = self._channel(client, room)
        sub = await self.node.subscribe_client(client, channel, None)
        # No await until the buffered publications are queued: live ones follow them.
        for data in sub.followups:
            client.enqueue(data)
        if client.state is ClientState.CONNECTED and channel in client.subscriptions:
            self.basic_enter_room(client.sid, client.namespace, room)  # not if it left meanwhile
        return sub.reply()

    async def leave(self, client: SocketIOClient, room: str) -> None:
        channel = self._channel(client, room)
        if channel not in client.subscriptions:
            raise ProtocolError(ErrorCode.NOT_SUBSCRIBED)
        await self.node.unsubscribe_client(client, channel)
        self.basic_leave_room(client.sid, client.namespace, room)

    @staticmethod
    def _channel(client: SocketIOClient, room: str) -> str:
        channel = room_channel(client.namespace, room)
        if channel is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "room must be a non-empty, short string")
        return channel

    # --- python-socketio's AsyncManager API, for server code that calls it -----------------

    async def enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        client = self.clients.get(sid)
        if client is None or not isinstance(room, str) or room == sid:
            self.basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
            return
        await self.join(client, room)

    async def leave_room(self, sid: str, namespace: str, room: Any) -> None:
        client = self.clients.get(sid)
        if client is None or not isinstance(room, str) or room == sid:
            self.basic_leave_room(sid, namespace, room)
            return
        channel = room_channel(namespace, room)
        if channel is not None and channel in client.subscriptions:
            await self.node.unsubscribe_client(client, channel)
        self.basic_leave_room(sid, namespace, room)

    async def close_room(self, room: Any, namespace: str) -> None:
        for sid, _ in list(self.get_participants(namespace, room)):
            await self.leave_room(sid, namespace, room)
