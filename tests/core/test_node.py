"""The core in-process: a Node on the real memory broker, clients on a recording transport.

The transport records frames instead of writing to a socket; everything it
records went through the real codec, hub, queue and writer. End-to-end tests
over real sockets are in tests/e2e.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from kizuna.broker.memory import MemoryBroker
from kizuna.core.client import Client, ClientState
from kizuna.core.node import Node
from kizuna.core.options import NamespaceOptions, NodeOptions
from kizuna.core.ports import Credentials, HistoryResult
from kizuna.protocol.codes import DisconnectCode
from kizuna.protocol.messages import Publication, StreamPosition


class RecordingTransport:
    name = "test"

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def write(self, frame: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.frames.append(frame)
        self.arrived.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.arrived.set()

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for frame in self.frames for line in frame.split(b"\n")]

    def pubs(self, channel: str) -> list[Any]:
        return [
            m["data"] for m in self.messages() if m.get("push") == "pub" and m["channel"] == channel
        ]

    def reply(self, cid: int) -> dict[str, Any]:
        return next(m for m in self.messages() if m.get("id") == cid)


class StaticAuth:
    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = ttl

    async def authenticate(self, token: str) -> Credentials:
        expires = time.time() + self.ttl if self.ttl is not None else None
        return Credentials(user=token, expires_at=expires)


NAMESPACES = {
    "chat": NamespaceOptions(history_size=5, history_ttl=60),
    "live": NamespaceOptions(history_size=0, presence=False, join_leave=False),
    "prices": NamespaceOptions(history_size=0, presence=False, join_leave=False, drop_oldest=True),
}


async def make_node(
    broker: Any = None,
    auth_ttl: float | None = None,
    *,
    events: Any = None,
    tracer: Any = None,
    **opts: Any,
) -> Node:
    broker = broker or MemoryBroker()
    node = Node(
        broker,
        broker,
        authenticator=StaticAuth(auth_ttl),
        options=NodeOptions(namespaces=NAMESPACES, **opts),
        events=events,
        tracer=tracer,
    )
    await node.start()
    return node


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def connected(node: Node, user: str = "alice") -> tuple[Client, RecordingTransport]:
    transport = RecordingTransport()
    client = Client(node, transport)
    await client.handle_frame(
        orjson.dumps({"id": 1, "method": "connect", "params": {"token": user}})
    )
    assert client.state is ClientState.CONNECTED
    return client, transport


def cmd(cid: int, method: str, **params: Any) -> bytes:
    return orjson.dumps({"id": cid, "method": method, "params": params})


async def test_commands_before_connect_close_with_4001() -> None:
    node = await make_node()
    transport = RecordingTransport()
    client = Client(node, transport)
    await client.handle_frame(cmd(1, "subscribe", channel="chat:a"))
    assert transport.closed is not None and transport.closed[0] == DisconnectCode.BAD_REQUEST
    assert client.id not in node.clients


async def test_publication_is_encoded_once_for_every_subscriber() -> None:
    node = await make_node()
    (a, ta), (b, tb) = await connected(node, "a"), await connected(node, "b")
    for client in (a, b):
        await client.handle_frame(cmd(2, "subscribe", channel="live:x"))
    await settle()
    await node.publish("live:x", b'{"n":1}')
    assert a._queue[-1] is b._queue[-1]  # the same bytes object, not an equal copy
    await settle()
    assert ta.pubs("live:x") == tb.pubs("live:x") == [{"n": 1}]


async def test_replies_and_pushes_coalesce_into_one_frame() -> None:
    node = await make_node()
    client, transport = await connected(node)
    await settle()
    transport.frames.clear()
    frame = b"\n".join(
        [
            cmd(2, "subscribe", channel="live:x"),
            cmd(3, "publish", channel="live:x", data=1),
            cmd(4, "ping"),
        ]
    )
    await client.handle_frame(frame)
    await settle()
    assert len(transport.frames) == 1
    assert [m.get("id", m.get("push")) for m in transport.messages()] == [2, "pub", 3, 4]


async def test_idle_connection_holds_no_writer_task() -> None:
    node = await make_node()
    client, _ = await connected(node)
    await settle()
    assert client._writer is None


async def test_slow_client_is_disconnected_and_others_keep_receiving() -> None:
    node = await make_node(client_queue_max_bytes=2000)
    slow, slow_t = await connected(node, "slow")
    fast, fast_t = await connected(node, "fast")
    for client in (slow, fast):
        await client.handle_frame(cmd(2, "subscribe", channel="live:x"))
    await settle()
    slow_t.gate = asyncio.Event()  # the slow reader stops reading
    for i in range(100):
        await node.publish("live:x", orjson.dumps({"i": i, "pad": "x" * 50}))
        await settle()
    assert slow_t.closed is not None and slow_t.closed[0] == DisconnectCode.SLOW
    assert slow.state is ClientState.CLOSED
    assert [d["i"] for d in fast_t.pubs("live:x")] == list(range(100))


async def test_history_and_recovery_exactly_the_missed_publications() -> None:
    node = await make_node()
    client, transport = await connected(node)
    await client.handle_frame(cmd(2, "subscribe", channel="chat:r"))
    await settle()
    sub = transport.reply(2)["result"]
    assert sub["recoverable"] is True and sub["offset"] == 0
    for i in range(3):
        await node.publish("chat:r", orjson.dumps(i))
    await client.close(DisconnectCode.SHUTDOWN)

    again, t2 = await connected(node)
    since = {"offset": 1, "epoch": sub["epoch"]}
    await again.handle_frame(cmd(2, "subscribe", channel="chat:r", since=since))
    await settle()
    result = t2.reply(2)["result"]
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == [1, 2]
    assert [p["offset"] for p in result["publications"]] == [2, 3]


async def test_recovery_refused_when_history_no_longer_reaches_back() -> None:
    node = await make_node()
    top = await node.publish("chat:r", b"0")
    for i in range(1, 8):  # history_size is 5: offset 2 falls out
        await node.publish("chat:r", orjson.dumps(i))
    client, transport = await connected(node)
    await client.handle_frame(
        cmd(2, "subscribe", channel="chat:r", since={"offset": 1, "epoch": top.epoch})
    )
    await settle()
    result = transport.reply(2)["result"]
    assert result["recovered"] is False
    assert "publications" not in result
    assert result["offset"] == 8


async def test_recovery_refused_for_another_epoch() -> None:
    node = await make_node()
    await node.publish("chat:r", b"0")
    client, transport = await connected(node)
    await client.handle_frame(
        cmd(2, "subscribe", channel="chat:r", since={"offset": 0, "epoch": "other"})
    )
    await settle()
    assert transport.reply(2)["result"]["recovered"] is False


class SlowHistoryBroker(MemoryBroker):
    """The memory broker with slow history reads: publications keep flowing meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def history(self, channel: str, **kwargs: Any) -> HistoryResult:
        result = await super().history(channel, **kwargs)
        self.reading.set()
        await self.release.wait()
        return result


async def test_publications_during_recovery_arrive_once_in_order() -> None:
    broker = SlowHistoryBroker()
    node = await make_node(broker)
    first = await node.publish("chat:r", b"0")
    await node.publish("chat:r", b"1")
    client, transport = await connected(node)
    subscribing = asyncio.create_task(
        client.handle_frame(
            cmd(
                2,
                "subscribe",
                channel="chat:r",
                since={"offset": first.offset, "epoch": first.epoch},
            )
        )
    )
    await broker.reading.wait()
    for i in (2, 3):  # published after history was read, before the subscribe completed
        await node.publish("chat:r", orjson.dumps(i))
    broker.release.set()
    await subscribing
    for i in (4, 5):
        await node.publish("chat:r", orjson.dumps(i))
    await settle()
    result = transport.reply(2)["result"]
    assert result["recovered"] is True
    recovered = [p["data"] for p in result["publications"]]
    assert recovered + transport.pubs("chat:r") == [1, 2, 3, 4, 5]


async def test_presence_and_join_leave() -> None:
    node = await make_node()
    a, ta = await connected(node, "alice")
    await a.handle_frame(cmd(2, "subscribe", channel="chat:p"))
    b, _ = await connected(node, "bob")
    await b.handle_frame(cmd(2, "subscribe", channel="chat:p"))
    await settle()
    await a.handle_frame(
        cmd(3, "presence", channel="chat:p") + b"\n" + cmd(4, "presence_stats", channel="chat:p")
    )
    await settle()
    clients = ta.reply(3)["result"]["clients"]
    assert {c["user"] for c in clients.values()} == {"alice", "bob"}
    assert ta.reply(4)["result"] == {"num_clients": 2, "num_users": 2}
    await b.close(DisconnectCode.SHUTDOWN)
    await settle()
    pushes = [
        (m["push"], m["info"]["user"]) for m in ta.messages() if m.get("push") in ("join", "leave")
    ]
    assert ("join", "bob") in pushes and ("leave", "bob") in pushes
    assert await node.presence_stats("chat:p") == {"num_clients": 1, "num_users": 1}


async def test_unsubscribe_stops_delivery_and_releases_the_broker_subscription() -> None:
    broker = MemoryBroker()
    node = await make_node(broker)
    client, transport = await connected(node)
    await client.handle_frame(cmd(2, "subscribe", channel="live:u"))
    await node.publish("live:u", b"1")
    await client.handle_frame(cmd(3, "unsubscribe", channel="live:u"))
    await settle()
    await node.publish("live:u", b"2")
    await settle()
    assert transport.pubs("live:u") == [1]
    assert "live:u" not in broker._subscribed
    await client.handle_frame(cmd(4, "unsubscribe", channel="live:u"))
    await settle()
    assert transport.reply(4)["error"]["code"] == 110


async def test_token_expiry_closes_with_3006_unless_refreshed() -> None:
    node = await make_node(auth_ttl=0.3, token_expiry_grace=0.1)
    client, transport = await connected(node)
    await asyncio.sleep(0.15)
    await client.handle_frame(cmd(2, "refresh", token="alice"))
    await asyncio.sleep(0.25)
    assert transport.closed is None  # refreshed: a new 0.3 s
    await asyncio.wait_for(_closed(transport), 1)
    assert transport.closed is not None and transport.closed[0] == DisconnectCode.TOKEN_EXPIRED


async def _closed(transport: RecordingTransport) -> None:
    while transport.closed is None:
        transport.arrived.clear()
        await transport.arrived.wait()


async def test_limits() -> None:
    node = await make_node(
        max_connections_per_user=1, max_channels_per_connection=1, max_connections=2
    )
    a, ta = await connected(node, "alice")
    t = RecordingTransport()
    second = Client(node, t)
    await second.handle_frame(cmd(1, "connect", token="alice"))
    assert t.closed is not None and t.closed[0] == DisconnectCode.CONNECTION_LIMIT
    await a.handle_frame(
        cmd(2, "subscribe", channel="live:1") + b"\n" + cmd(3, "subscribe", channel="live:2")
    )
    await settle()
    assert ta.reply(3)["error"]["code"] == 106
    await connected(node, "bob")
    t3 = RecordingTransport()
    await Client(node, t3).handle_frame(cmd(1, "connect", token="carol"))
    assert t3.closed is not None and t3.closed[0] == DisconnectCode.CONNECTION_LIMIT


async def test_disconnect_user_and_shutdown() -> None:
    node = await make_node()
    _, ta = await connected(node, "alice")
    _, tb = await connected(node, "bob")
    assert await node.disconnect_user("alice") == 1
    assert ta.closed is not None and ta.closed[0] == DisconnectCode.FORBIDDEN
    await node.shutdown()
    assert tb.closed is not None and tb.closed[0] == DisconnectCode.SHUTDOWN
    assert not node.clients
    assert not await node.ready()


@pytest.mark.parametrize(
    ("method", "code"), [("history", 108), ("presence", 108), ("presence_stats", 108)]
)
async def test_features_off_in_a_namespace_answer_108(method: str, code: int) -> None:
    node = await make_node()
    client, transport = await connected(node)
    await client.handle_frame(cmd(2, method, channel="live:x"))
    await settle()
    assert transport.reply(2)["error"]["code"] == code


async def test_history_positions() -> None:
    node = await make_node()
    for i in range(3):
        position = await node.publish("chat:h", orjson.dumps(i))
    assert position == StreamPosition(3, position.epoch)
    out = await node.history("chat:h", limit=2, reverse=True)
    assert [p["data"] for p in orjson.loads(orjson.dumps(out))["publications"]] == [2, 1]


async def test_slow_client_sees_no_gap_before_its_close() -> None:
    """After the overflow nothing more is written: the client recovers from its last offset."""
    node = await make_node(client_queue_max_bytes=2000)
    slow, slow_t = await connected(node, "slow")
    await slow.handle_frame(cmd(2, "subscribe", channel="chat:gap"))
    await settle()
    slow_t.gate = asyncio.Event()
    for i in range(60):
        await node.publish("chat:gap", orjson.dumps({"i": i, "pad": "x" * 50}))
    slow_t.gate.set()
    await settle()
    assert slow_t.closed is not None
    offsets = [m["offset"] for m in slow_t.messages() if m.get("push") == "pub"]
    assert offsets == list(range(1, len(offsets) + 1))  # contiguous from the start, then nothing


async def test_anonymous_connection_cannot_refresh_into_a_user() -> None:
    broker = MemoryBroker()
    namespaces = {"open": NamespaceOptions(allow_anonymous=True)}
    node = Node(
        broker, broker, authenticator=StaticAuth(), options=NodeOptions(namespaces=namespaces)
    )
    await node.start()
    transport = RecordingTransport()
    client = Client(node, transport)
    await client.handle_frame(cmd(1, "connect"))
    await client.handle_frame(cmd(2, "refresh", token="bob"))
    await settle()
    assert transport.reply(2)["error"]["code"] == 103
    assert client.user == ""
    assert "bob" not in node.users


async def test_command_rate_answers_111_then_closes_with_4005() -> None:
    node = await make_node(command_rate=1, command_burst=3)
    client, transport = await connected(node)  # the connect took one token
    frame = b"\n".join(cmd(i, "ping") for i in range(2, 8))
    await client.handle_frame(frame)
    await settle()
    codes = [m.get("error", {}).get("code") for m in transport.messages() if m.get("id", 1) > 1]
    assert codes == [None, None, 111, 111, 111]  # 2 tokens left, then refused...
    assert transport.closed is not None
    assert transport.closed[0] == DisconnectCode.TOO_MANY_REQUESTS  # ...and closed past the burst


async def test_command_rate_refills() -> None:
    node = await make_node(command_rate=20, command_burst=1)
    client, transport = await connected(node)
    for i in range(2, 6):
        await asyncio.sleep(0.06)  # slower than 20/s: never refused
        await client.handle_frame(cmd(i, "ping"))
    await settle()
    assert all("result" in transport.reply(i) for i in range(2, 6))


async def test_connections_per_ip() -> None:
    node = await make_node(max_connections_per_ip=2)
    clients = []
    for i in range(3):
        transport = RecordingTransport()
        client = Client(node, transport, remote_addr=f"10.0.0.1:{5000 + i}")
        await client.handle_frame(cmd(1, "connect", token=f"u{i}"))
        clients.append((client, transport))
    assert [t.closed for _, t in clients[:2]] == [None, None]
    assert clients[2][1].closed is not None
    assert clients[2][1].closed[0] == DisconnectCode.CONNECTION_LIMIT
    other = Client(node, RecordingTransport(), remote_addr="10.0.0.2:1")
    await other.handle_frame(cmd(1, "connect", token="x"))
    assert other.state is ClientState.CONNECTED
    await clients[0][0].close(DisconnectCode.SHUTDOWN)
    again = Client(node, RecordingTransport(), remote_addr="10.0.0.1:9")
    await again.handle_frame(cmd(1, "connect", token="y"))
    assert again.state is ClientState.CONNECTED


async def test_drain_spreads_closes_and_advises_reconnect() -> None:
    node = await make_node()
    transports = [(await connected(node, f"u{i}"))[1] for i in range(10)]
    await settle()
    started = time.monotonic()
    closed_at: dict[int, float] = {}

    async def watch(i: int, t: RecordingTransport) -> None:
        await _closed(t)
        closed_at[i] = time.monotonic() - started

    watchers = [asyncio.create_task(watch(i, t)) for i, t in enumerate(transports)]
    await node.close_clients(DisconnectCode.SHUTDOWN, window=0.5)
    await asyncio.gather(*watchers)
    assert max(closed_at.values()) >= 0.35  # spread over the window, not all at once
    assert min(closed_at.values()) < 0.1
    for t in transports:
        advice = [m for m in t.messages() if m.get("push") == "disconnect"]
        assert advice[0]["code"] == 3001
        assert advice[0]["reconnect"] is True
        assert 0 <= advice[0]["delay_ms"] <= 1000
        assert t.closed is not None
        assert t.closed[0] == DisconnectCode.SHUTDOWN
    assert not await node.ready()


class ClaimsAuth:
    """Tokens of the form ``user/jti/iat``, to test revocation without signing."""

    async def authenticate(self, token: str) -> Credentials:
        user, jti, iat = token.split("/")
        return Credentials(user=user, token_id=jti, issued_at=float(iat))


async def test_revoked_token_is_refused_and_its_connections_closed() -> None:
    broker = MemoryBroker()
    node = Node(
        broker, broker, authenticator=ClaimsAuth(), options=NodeOptions(namespaces=NAMESPACES)
    )
    await node.start()
    now = time.time()
    holders = []
    for token in (f"ann/t1/{now}", f"ann/t2/{now}", f"bob/t3/{now}"):
        transport = RecordingTransport()
        client = Client(node, transport)
        await client.handle_frame(cmd(1, "connect", token=token))
        holders.append(transport)
    await node.revoke_token("t1", until=now + 60)
    await settle()
    assert [t.closed[0] if t.closed else None for t in holders] == [4003, None, None]
    late = RecordingTransport()
    await Client(node, late).handle_frame(cmd(1, "connect", token=f"ann/t1/{now}"))
    await settle()
    assert late.reply(1)["error"]["code"] == 101

    await node.revoke_user("ann", before=now, until=now + 60)
    await settle()
    assert [t.closed[0] if t.closed else None for t in holders] == [4003, 4003, None]
    fresh = Client(node, RecordingTransport())
    await fresh.handle_frame(cmd(1, "connect", token=f"ann/t9/{now + 5}"))  # issued after
    assert fresh.state is ClientState.CONNECTED
    await node.revoke_token("gone", until=now - 1)  # already over: nothing refused
    assert not node.revocations.revoked(Credentials("x", token_id="gone"))


async def test_drop_oldest_sheds_old_publications_and_keeps_the_connection() -> None:
    node = await make_node(client_queue_max_bytes=1000)
    slow, slow_t = await connected(node, "slow")
    await slow.handle_frame(cmd(2, "subscribe", channel="prices:x"))
    await settle()
    slow_t.gate = asyncio.Event()  # stops reading
    for i in range(200):
        await node.publish("prices:x", orjson.dumps({"i": i, "pad": "x" * 40}))
        await settle()
    assert slow.queued_bytes <= 1000
    slow_t.gate.set()
    await settle()
    got = [d["i"] for d in slow_t.pubs("prices:x")]
    assert slow_t.closed is None  # still connected
    assert got[-1] == 199  # the latest state arrived
    assert got == sorted(got)  # in order, with a gap where old ones were shed
    assert len(got) < 200
    await slow.handle_frame(cmd(3, "ping"))
    await settle()
    assert "result" in slow_t.reply(3)


async def test_drop_oldest_never_drops_replies() -> None:
    node = await make_node(client_queue_max_bytes=300)
    client, transport = await connected(node)
    await client.handle_frame(cmd(2, "subscribe", channel="prices:y"))
    await settle()
    transport.gate = asyncio.Event()
    await client.handle_frame(b"\n".join(cmd(i, "ping") for i in range(10, 20)))
    for i in range(30):
        await node.publish("prices:y", orjson.dumps({"i": i}))
    transport.gate.set()
    await settle()
    assert [m["id"] for m in transport.messages() if "id" in m][-10:] == list(range(10, 20))


async def test_offsets_that_jump_close_subscribers_with_3005_and_duplicates_are_dropped() -> None:
    """What a broker reconnect can cause: the node never passes a gap on silently."""
    node = await make_node()
    client, transport = await connected(node)
    await client.handle_frame(cmd(2, "subscribe", channel="chat:g"))
    await settle()
    epoch = transport.reply(2)["result"]["epoch"]
    node.handle_publication("chat:g", Publication(b"1", 1), epoch)
    node.handle_publication("chat:g", Publication(b"1", 1), epoch)  # duplicate: dropped
    node.handle_publication("chat:g", Publication(b"2", 2), epoch)
    node.handle_publication("chat:g", Publication(b"9", 1), "fresh")  # new stream from 1: fine
    await settle()
    assert transport.pubs("chat:g") == [1, 2, 9]
    node.handle_publication("chat:g", Publication(b"5", 5), "fresh")  # 2..4 lost
    await settle()
    assert transport.pubs("chat:g") == [1, 2, 9]
    assert transport.closed is not None
    assert transport.closed[0] == DisconnectCode.INSUFFICIENT_STATE


async def test_broker_reported_gap_closes_only_that_channels_subscribers() -> None:
    node = await make_node()
    a, ta = await connected(node, "a")
    b, tb = await connected(node, "b")
    await a.handle_frame(cmd(2, "subscribe", channel="chat:lost"))
    await b.handle_frame(cmd(2, "subscribe", channel="chat:kept"))
    await settle()
    node.handle_gap("chat:lost")
    await settle()
    assert ta.closed is not None
    assert ta.closed[0] == 3005
    assert tb.closed is None
