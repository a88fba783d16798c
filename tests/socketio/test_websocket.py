"""Socket.IO packets written straight to an upgraded WebSocket, never out of order.

Unit checks of :class:`Outbox` with a recording stand-in for the direct writer
(when a packet may skip the writer task, and when it must wait behind
others), and of :class:`DirectWriter` with a stand-in WebSocket (which
packets it writes itself, and with which bytes). The end-to-end order checks,
with real clients, are in test_order.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engineio import packet as eio_packet  # type: ignore[import-untyped]
from engineio.async_drivers import asgi as eio_asgi  # type: ignore[import-untyped]

from kizuna.broker.memory import MemoryBroker
from kizuna.core.node import Node
from kizuna.transports.common import HandshakeSettings
from kizuna.transports.socketio import SocketIOServer
from kizuna.transports.socketio_manager import Outbox
from kizuna.transports.socketio_packets import (
    DroppablePacket,
    encode_event,
    event_packet,
)
from kizuna.transports.socketio_websocket import DirectWriter, EngineWebSocket


class RecordingWriter:
    """Stands in for :class:`DirectWriter`: records what it wrote, or refuses (backpressure)."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.accepts = True

    def write(self, pkt: Any) -> bool:
        if self.accepts:
            self.written.append(pkt)
        return self.accepts


def message(n: int) -> Any:
    return event_packet("/chat", "newMessage", n)


async def waiting_reader(outbox: Outbox) -> asyncio.Task[Any]:
    """A reader suspended in ``get()`` on the empty outbox, as python-engineio's idle writer is."""
    task = asyncio.ensure_future(outbox.get())
    await asyncio.sleep(0)
    assert outbox.waiting == 1
    return task


async def test_written_at_once_only_when_the_writer_task_is_idle() -> None:
    outbox = Outbox()
    writer = RecordingWriter()
    outbox.direct = writer
    first = message(1)
    outbox.put_nowait(first)  # no reader waits: it may hold packets not yet sent
    assert writer.written == []
    assert outbox.get_nowait() is first
    outbox.task_done()

    reader = await waiting_reader(outbox)
    burst = [message(n) for n in range(2, 6)]
    for pkt in burst:
        outbox.put_nowait(pkt)
    assert writer.written == burst, "written in the order they were put"
    assert outbox.empty()
    assert outbox.nbytes == 0
    assert not reader.done(), "the writer task was not woken"
    await asyncio.wait_for(outbox.join(), 1)  # a close's drain does not wait for them
    reader.cancel()


async def test_a_packet_that_waits_keeps_the_ones_after_it_waiting() -> None:
    """Backpressure queues one packet: later ones queue behind it, whatever the socket says."""
    outbox = Outbox()
    writer = RecordingWriter()
    outbox.direct = writer
    reader = await waiting_reader(outbox)
    writer.accepts = False
    first, second, third = message(1), message(2), message(3)
    outbox.put_nowait(first)
    writer.accepts = True  # the socket drained; the reader is woken but has not run yet
    outbox.put_nowait(second)
    assert writer.written == []
    assert await reader is first
    outbox.task_done()
    outbox.put_nowait(third)  # the reader is busy with what it took: it must not be overtaken
    assert writer.written == []
    assert [outbox.get_nowait(), outbox.get_nowait()] == [second, third]


async def test_engineio_sentinel_and_shed_go_through_the_queue() -> None:
    outbox = Outbox()
    writer = RecordingWriter()
    outbox.direct = writer
    reader = await waiting_reader(outbox)
    outbox.put_nowait(None)  # python-engineio's "stop": only its writer may act on it
    assert writer.written == []
    assert await reader is None
    outbox.task_done()

    # A reader woken but not yet run, and a shed meanwhile: what it keeps goes back in line.
    reader = await waiting_reader(outbox)
    writer.accepts = False
    old = [DroppablePacket(encode_event("/chat", "newMessage", "x" * 100)) for _ in range(2)]
    ack = eio_packet.Packet(eio_packet.MESSAGE, '3/chat,1[{"ok":true}]')
    for pkt in (old[0], ack, old[1]):
        outbox.put_nowait(pkt)
    writer.accepts = True
    assert outbox.waiting == 1
    assert outbox.shed(0) == 2
    assert writer.written == []
    assert await reader is ack


class Socket:
    """python-engineio's socket, as far as the direct writer looks at it."""

    upgraded = True


class FakeWebSocket:
    """Stands in for :class:`WebSocketTransport`: records frames, or refuses, or fails."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.result: bool | Exception = True

    def write_nowait(self, frame: bytes) -> bool:
        if isinstance(self.result, Exception):
            raise self.result
        if self.result:
            self.frames.append(frame)
        return self.result


def test_direct_writer_sends_the_shared_bytes_of_text_messages() -> None:
    ws = FakeWebSocket()
    writer = DirectWriter(Socket(), ws)  # type: ignore[arg-type]
    pkt = message(1)
    assert writer.write(pkt)
    assert ws.frames[0] is pkt.wire, "the room's one encoding, not a copy per member"
    assert pkt.wire == pkt.encode().encode()
    ack = eio_packet.Packet(eio_packet.MESSAGE, '3/chat,7[{"ok":true}]')  # python-socketio's
    assert writer.write(ack)
    assert ws.frames[1] == b'43/chat,7[{"ok":true}]'


@pytest.mark.parametrize(
    "pkt",
    [
        eio_packet.Packet(eio_packet.PING),
        eio_packet.Packet(eio_packet.CLOSE),
        eio_packet.Packet(eio_packet.NOOP),
        eio_packet.Packet(eio_packet.MESSAGE, b"\x01binary"),
    ],
    ids=["ping", "close", "noop", "binary"],
)
def test_direct_writer_leaves_engineio_packets_to_the_writer_task(pkt: Any) -> None:
    ws = FakeWebSocket()
    assert not DirectWriter(Socket(), ws).write(pkt)  # type: ignore[arg-type]
    assert ws.frames == []


def test_direct_writer_declines_until_upgraded_and_when_the_socket_cannot_take_it() -> None:
    ws = FakeWebSocket()
    socket = Socket()
    socket.upgraded = False  # polling, or mid-upgrade: the long-poll takes the packets
    writer = DirectWriter(socket, ws)  # type: ignore[arg-type]
    assert not writer.write(message(1))
    socket.upgraded = True
    ws.result = False  # backpressure or closing
    assert not writer.write(message(2))
    ws.result = RuntimeError("the peer's close frame came first")
    assert not writer.write(message(3))
    assert ws.frames == []


async def test_engine_server_uses_the_direct_websocket() -> None:
    broker = MemoryBroker()
    node = Node(broker, broker)
    server = SocketIOServer(node, HandshakeSettings())
    assert server.eio._async["websocket"] is EngineWebSocket
    assert eio_asgi._async["websocket"] is eio_asgi.WebSocket, "python-engineio's table changed"
