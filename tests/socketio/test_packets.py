"""Socket.IO packets for channel traffic: correct on the wire, and encoded once per room.

The wire checks decode kizuna's text with python-socketio's own parser. The
fan-out check runs a real Node (memory broker) and a real python-socketio
server and manager in-process, with no network: three members of one room
must receive the very same Engine.IO packet object for one publication.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from engineio import packet as eio_packet  # type: ignore[import-untyped]
from socketio import packet as sio_packet  # type: ignore[import-untyped]

from kizuna.broker.memory import MemoryBroker
from kizuna.core.client import ClientState
from kizuna.core.node import Node
from kizuna.core.ports import Credentials
from kizuna.protocol import codec
from kizuna.protocol.messages import ClientInfo, Connect, Publication
from kizuna.transports.common import HandshakeSettings
from kizuna.transports.socketio import SocketIOServer
from kizuna.transports.socketio_manager import (
    KizunaManager,
    Outbox,
    SocketIOClient,
    SocketIOTransport,
)
from kizuna.transports.socketio_packets import (
    PushTranslator,
    encode_event,
    room_channel,
    translate_push,
)


def decode(pkt: Any) -> tuple[int, str, list[Any]]:
    """An Engine.IO MESSAGE → (Socket.IO packet type, namespace, data), by python-socketio."""
    wire = pkt.encode()
    eio = eio_packet.Packet(encoded_packet=wire)
    assert eio.packet_type == eio_packet.MESSAGE
    sio = sio_packet.Packet(encoded_packet=eio.data)
    return sio.packet_type, sio.namespace or "/", sio.data


@pytest.mark.parametrize("namespace", ["/", "/chat", "/notifications"])
@pytest.mark.parametrize(
    "args",
    [
        [],
        [{"userId": "u", "content": 'héllo 世界 \n "quoted"', "timestamp": 1}],
        [None, [1, 2.5, True], {"room": "a:b"}],
    ],
)
def test_encode_event_is_what_python_socketio_decodes(namespace: str, args: list[Any]) -> None:
    text = encode_event(namespace, "newMessage", *args)
    packet = sio_packet.Packet(encoded_packet=text)
    assert packet.packet_type == sio_packet.EVENT
    assert (packet.namespace or "/") == namespace
    assert packet.id is None
    assert packet.data == ["newMessage", *args]
    assert "\n" not in text


def test_translate_publication_join_leave() -> None:
    info = ClientInfo(user="alice", client="c1")
    pub = Publication(orjson.dumps({"content": "hi"}), 7, info, 0.0, None)
    kind, ns, data = decode(translate_push(codec.encode_publication_push("chat:r:1", pub, "e")))
    assert (kind, ns) == (sio_packet.EVENT, "/chat")
    assert data == ["newMessage", {"content": "hi"}, {"room": "r:1", "offset": 7}]
    no_history = Publication(b"[1]", 0, None, 0.0, None)
    _, _, data = decode(translate_push(codec.encode_publication_push("chat:r", no_history)))
    assert data == ["newMessage", [1], {"room": "r"}]
    _, ns, data = decode(translate_push(codec.encode_join_push("lobby", info)))
    assert (ns, data) == ("/", ["userJoined", {"userId": "alice", "room": "lobby"}])
    _, ns, data = decode(translate_push(codec.encode_join_push("notifications:x", info)))
    assert (ns, data) == ("/notifications", ["userJoined", {"userId": "alice", "room": "x"}])
    anonymous = ClientInfo(user="", client="c9")
    _, _, data = decode(translate_push(codec.encode_leave_push("chat:x", anonymous)))
    assert data == ["userLeft", {"userId": "c9", "room": "x"}]


@pytest.mark.parametrize(
    "data",
    [
        codec.encode_reply(1, {"client": "x"}),
        codec.encode_error_reply(2, 107, "bad"),
        codec.encode_disconnect_push(3001, "shutdown", True),
        codec.encode_unsubscribe_push("chat:r", 2500, "gone"),
        b"not json",
        b"[1, 2]",
    ],
)
def test_other_messages_give_socketio_members_nothing(data: bytes) -> None:
    assert translate_push(data) is None


def test_translator_caches_by_identity() -> None:
    translator = PushTranslator()
    first = codec.encode_join_push("chat:r", ClientInfo("u", "c"))
    equal = bytes(bytearray(first))
    assert equal == first and equal is not first
    packet = translator.translate(first)
    assert packet is not None
    assert translator.translate(first) is packet
    other = translator.translate(equal)
    assert other is not None
    assert other is not packet  # a new push object is translated again, never guessed
    assert decode(other) == decode(packet)


def test_room_channel() -> None:
    assert room_channel("/chat", "r1") == "chat:r1"
    assert room_channel("/notifications", "a:b") == "notifications:a:b"
    assert room_channel("/chat", "") is None
    assert room_channel("/", "lobby") == "lobby"  # kizuna's namespace "" is Socket.IO's "/"
    assert room_channel("/chat", "x" * 250) == "chat:" + "x" * 250  # 255, the longest
    assert room_channel("/chat", "x" * 251) is None


async def test_outbox_counts_bytes_and_discards() -> None:
    outbox = Outbox()
    texts = [encode_event("/chat", "e", "x" * n) for n in (1, 10, 100)]
    for text in texts:
        outbox.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, text))
    outbox.put_nowait(None)  # python-engineio's sentinel weighs nothing
    assert outbox.nbytes == sum(len(t) + 1 for t in texts)  # + the Engine.IO type digit
    first = outbox.get_nowait()
    outbox.task_done()
    assert outbox.nbytes == sum(len(t) + 1 for t in texts[1:])
    assert first.data == texts[0]
    outbox.discard()
    assert outbox.nbytes == 0
    assert outbox.empty()
    await asyncio.wait_for(outbox.join(), 1)  # every put is accounted for


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    broker = MemoryBroker()
    node = Node(broker, broker)
    await node.start()
    yield node
    await node.shutdown()


async def member(server: SocketIOServer, n: int) -> SocketIOClient:
    """A connected /chat member, made as the connect handler makes one (minus the network)."""
    manager: KizunaManager = server.manager
    sid = await manager.pre_connect(f"eio-{n}", "/chat")
    transport = SocketIOTransport(server, sid, "/chat", Outbox(), server.translator)
    client = SocketIOClient(
        server.node, transport, credentials=Credentials(f"user-{n}"), remote_addr=""
    )
    await client.handle_command(Connect(1, None, None))
    assert client.state is ClientState.CONNECTED
    transport.accepted = True
    transport.outbox.clients.append(client)
    manager.clients[sid] = client
    await manager.connect(sid, "/chat")
    return client


async def test_fan_out_encodes_once_per_room(node: Node) -> None:
    server = SocketIOServer(node, HandshakeSettings())
    members = [await member(server, n) for n in range(3)]
    for client in members:
        await server.manager.join(client, "r")
    for client in members:
        client.sio.outbox.discard()  # the join events; checked elsewhere

    await node.publish("chat:r", orjson.dumps({"content": "once"}))

    packets = [client.sio.outbox.get_nowait() for client in members]
    assert all(p is packets[0] for p in packets), "a member got its own copy of the packet"
    _, ns, data = decode(packets[0])
    assert (ns, data) == ("/chat", ["newMessage", {"content": "once"}, {"room": "r", "offset": 1}])
    assert server.manager.get_rooms(members[0].sid, "/chat") == [members[0].sid, "r"]


async def test_slow_member_overflows_alone(node: Node) -> None:
    """A member whose outbox passes client_queue_max_bytes is closed 3002; the others go on."""
    server = SocketIOServer(node, HandshakeSettings())
    stuck, fine = [await member(server, n) for n in range(2)]
    for client in (stuck, fine):
        await server.manager.join(client, "r")
    limit = node.options.client_queue_max_bytes
    blob = "x" * 60_000
    for _ in range(limit // len(blob) + 2):
        await node.publish("chat:r", orjson.dumps({"blob": blob}))
        while not fine.sio.outbox.empty():  # this one keeps up
            fine.sio.outbox.get_nowait()
            fine.sio.outbox.task_done()
    assert stuck.state is ClientState.CLOSED
    assert fine.state is ClientState.CONNECTED
    assert stuck.sio.outbox.nbytes < limit  # its backlog was dropped, not kept
    assert "chat:r" in fine.subscriptions
