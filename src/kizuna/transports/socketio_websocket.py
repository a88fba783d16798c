"""Engine.IO's WebSocket transport, with packets written straight through uvicorn.

Why: python-engineio sends each packet of an upgraded connection from a writer
task that wakes once per packet (``asyncio.wait_for(queue.get())``: a task, a
timer and futures every time) and then goes through the ASGI ``send``. In a
fan-out to a thousand members that is a thousand wake-ups per publication,
and the short-lived objects they leave behind keep the cyclic GC busy.

How: :class:`EngineWebSocket` stands in for python-engineio's ASGI WebSocket
wrapper and gives the connection's :class:`~kizuna.transports.socketio_manager.Outbox`
a :class:`DirectWriter`. When a text MESSAGE is queued while the writer task
is idle — waiting in ``get()`` on an empty outbox, so it holds nothing not yet
sent — the packet is written at once through uvicorn's protocol object, as the
native endpoint writes (:meth:`~kizuna.transports.websocket.WebSocketTransport.write_nowait`,
docs/decisions/0001-synchronous-writes.md). Nothing queued or in flight can
be overtaken, so the order is the order of ``put``, as before
(docs/decisions/0003-socketio-direct-writes.md). Otherwise — the writer is
busy, packets wait, the socket applies backpressure or is closing, the
packet is binary or is Engine.IO's own (PING, CLOSE, NOOP, the ``None``
sentinel), or the connection is still polling or mid-upgrade — the packet is
queued and python-engineio's writer sends it, as before. A connection whose
transport buffer is full therefore still fills its outbox, and
``client_queue_max_bytes`` still finds it (3002).
"""

from __future__ import annotations

from typing import Any

from engineio import packet as eio_packet  # type: ignore[import-untyped]
from engineio.async_drivers import asgi as eio_asgi  # type: ignore[import-untyped]

from kizuna.transports.socketio_manager import Outbox
from kizuna.transports.socketio_packets import EioPacket, WirePacket
from kizuna.transports.websocket import WebSocketTransport

__all__ = ["DirectWriter", "EngineWebSocket"]


class DirectWriter:
    """Writes an upgraded Engine.IO socket's text packets without its writer task."""

    __slots__ = ("_socket", "_ws")

    def __init__(self, socket: Any, ws: WebSocketTransport) -> None:
        self._socket = socket
        self._ws = ws

    def write(self, pkt: EioPacket) -> bool:
        """Write one packet now if it may go this way; False: queue it for the writer task.

        The caller (:meth:`Outbox.put_nowait`) has checked that nothing waits in
        the outbox and that the writer task is idle.
        """
        if pkt.packet_type != eio_packet.MESSAGE or pkt.binary or not self._socket.upgraded:
            return False
        wire = pkt.wire if isinstance(pkt, WirePacket) else pkt.encode().encode()
        try:
            return self._ws.write_nowait(wire)
        except Exception:
            # The WebSocket is ending (the peer's close frame came first, say): the writer
            # task meets the same error with this packet and ends the connection its way.
            return False


class EngineWebSocket(eio_asgi.WebSocket):  # type: ignore[misc]
    """python-engineio's ASGI WebSocket, lending its outbox a :class:`DirectWriter`."""

    async def __call__(self, environ: dict[str, Any]) -> Any:
        # python-engineio builds this with its socket's bound handler: the socket is its
        # __self__. Until the socket is upgraded the writer declines every packet.
        socket = getattr(self.handler, "__self__", None)
        outbox = getattr(socket, "queue", None)
        if not isinstance(outbox, Outbox):  # pragma: no cover - every kizuna socket has one
            return await super().__call__(environ)
        outbox.direct = DirectWriter(socket, WebSocketTransport(environ["asgi.send"]))
        try:
            return await super().__call__(environ)
        finally:
            outbox.direct = None  # the WebSocket is gone; also breaks the reference cycle
