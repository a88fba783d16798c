"""Commands answered in the call that delivers them (Client.handle_frame_nowait).

A busy connection's frames are mostly publishes. On a broker that publishes in the
call (the memory broker) they are answered without a coroutine, and a frame only
becomes a coroutine from its first command that has to wait; replies keep command
order either way.
"""

from __future__ import annotations

import asyncio

import orjson

from kizuna.core.events import NoTracer
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from tests.core.test_node import cmd, connected, make_node, settle


def frame(*commands: bytes) -> bytes:
    return b"\n".join(commands)


async def test_publishes_and_pings_are_answered_in_the_call() -> None:
    node = await make_node()
    reader, seen = await connected(node, "reader")
    await reader.handle_frame(cmd(2, "subscribe", channel="chat:a"))
    writer, replies = await connected(node, "writer")
    await settle()
    rest = writer.handle_frame_nowait(
        frame(cmd(2, "publish", channel="chat:a", data=1), cmd(3, "ping"))
    )
    assert rest is None
    # Stored, delivered to the subscriber's queue and answered, before any await.
    assert reader.queued_bytes > 0
    assert writer.queued_bytes > 0
    assert [p.data for p in (await node.broker.history("chat:a")).publications] == [b"1"]
    await settle()
    assert [m["id"] for m in replies.messages() if m.get("id", 0) > 1] == [2, 3]
    assert replies.reply(2)["result"]["offset"] == 1
    assert seen.pubs("chat:a") == [1]


async def test_a_frame_goes_on_in_a_coroutine_from_its_first_command_that_waits() -> None:
    node = await make_node()
    client, transport = await connected(node)
    rest = client.handle_frame_nowait(
        frame(
            cmd(2, "publish", channel="chat:a", data="now"),
            cmd(3, "subscribe", channel="chat:b"),
            cmd(4, "publish", channel="chat:b", data="after"),
            cmd(5, "ping"),
        )
    )
    assert rest is not None
    assert len((await node.history("chat:a"))["publications"]) == 1
    assert (await node.history("chat:b"))["publications"] == []  # not before the subscribe
    await rest
    await settle()
    assert [m["id"] for m in transport.messages() if m.get("id", 0) > 1] == [2, 3, 4, 5]
    assert transport.pubs("chat:b") == ["after"]  # subscribed before it was published


async def test_refusals_are_answered_in_the_call() -> None:
    node = await make_node(command_rate=1, command_burst=3)  # the connect took one
    client, transport = await connected(node)
    unknown = cmd(2, "publish", channel="nowhere:x", data=1)  # no such namespace
    assert client.handle_frame_nowait(unknown) is None
    assert client.handle_frame_nowait(cmd(3, "publish", channel="chat:a")) is None  # no data
    assert client.handle_frame_nowait(cmd(4, "ping")) is None  # over the rate: 111
    await settle()
    codes = {m["id"]: m["error"]["code"] for m in transport.messages() if "error" in m}
    assert codes == {2: ErrorCode.UNKNOWN_CHANNEL, 3: ErrorCode.BAD_REQUEST, 4: 111}
    # Refused again and again: the close waits for the flush, so it is a coroutine.
    rest = client.handle_frame_nowait(frame(*(cmd(5 + i, "ping") for i in range(5))))
    assert rest is not None
    await rest
    assert transport.closed is not None
    assert transport.closed[0] == DisconnectCode.TOO_MANY_REQUESTS


async def test_with_tracing_a_publish_runs_the_traced_coroutine() -> None:
    """Spans need Node.publish: a traced node answers no publish in the call."""
    node = await make_node(tracer=NoTracer())
    assert not node.publishes_in_call
    client, transport = await connected(node)
    rest = client.handle_frame_nowait(cmd(2, "publish", channel="chat:a", data=1))
    assert rest is not None
    await rest
    await settle()
    assert transport.reply(2)["result"]["offset"] == 1


async def test_a_bad_frame_closes_through_the_coroutine() -> None:
    node = await make_node(max_message_size=100)
    client, transport = await connected(node)
    rest = client.handle_frame_nowait(orjson.dumps({"id": 2, "method": "ping", "x": "y" * 200}))
    assert rest is not None
    await asyncio.wait_for(rest, 5)
    assert transport.closed is not None
    assert transport.closed[0] == DisconnectCode.MESSAGE_TOO_LARGE
