"""The guide's four gRPC modes against a real node, with a grpcio (grpc.aio) client."""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from kizuna.transports.grpc import CHANNEL_KEY
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.grpc.clients import TIMEOUT, read, subscriptions
from tests.grpc.conftest import GrpcNode, auth
from tests.support.processes import SMALL_HISTORY

Stub = chat_pb2_grpc.ChatServiceStub


async def send(
    stub: Stub, channel: str, content: str, user: str = "alice"
) -> chat_pb2.MessageResponse:
    response: chat_pb2.MessageResponse = await stub.SendMessage(
        chat_pb2.ChatMessage(channel=channel, content=content), metadata=auth(user)
    )
    return response


# --- 1. unary ---------------------------------------------------------------------------------


async def test_send_message_returns_the_position_a_subscriber_sees(stub: Stub, uid: str) -> None:
    channel = f"chat:{uid}"
    sub = stub.SubscribeMessages(
        chat_pb2.SubscriptionRequest(channels=[channel]), metadata=auth("bob")
    )
    start = (await subscriptions(sub))[channel]
    before = int(time.time() * 1000)
    response = await send(stub, channel, "hello", user="alice")
    assert response.channel == channel
    assert response.offset == start["offset"] + 1
    assert response.epoch == start["epoch"]
    assert before <= response.timestamp <= int(time.time() * 1000)
    [message] = await read(sub)
    assert (message.user_id, message.content, message.channel) == ("alice", "hello", channel)
    assert (message.offset, message.epoch) == (response.offset, response.epoch)
    assert message.timestamp == response.timestamp
    assert message.client_id
    sub.cancel()


async def test_send_message_keeps_a_client_timestamp_and_a_matching_user_id(
    stub: Stub, uid: str
) -> None:
    channel = f"chat:{uid}"
    sub = stub.SubscribeMessages(chat_pb2.SubscriptionRequest(channels=[channel]), metadata=auth())
    await subscriptions(sub)
    request = chat_pb2.ChatMessage(
        user_id="alice", channel=channel, content="at noon", timestamp=1_700_000_000_000
    )
    response = await stub.SendMessage(request, metadata=auth("alice"))
    assert response.timestamp == 1_700_000_000_000
    [message] = await read(sub)
    assert (message.user_id, message.timestamp) == ("alice", 1_700_000_000_000)
    sub.cancel()


# --- 2. server streaming ---------------------------------------------------------------------


async def test_subscribe_messages_delivers_each_channel_once_in_order(stub: Stub, uid: str) -> None:
    a, b = f"chat:{uid}-a", f"chat:{uid}-b"
    sub = stub.SubscribeMessages(chat_pb2.SubscriptionRequest(channels=[a, b]), metadata=auth())
    assert set(await subscriptions(sub)) == {a, b}
    for i in range(5):
        await send(stub, a, f"a{i}")
        await send(stub, b, f"b{i}")
    await send(stub, a, "end")
    messages = await read(sub, 11)
    assert [m.content for m in messages if m.channel == a] == [*(f"a{i}" for i in range(5)), "end"]
    assert [m.content for m in messages if m.channel == b] == [f"b{i}" for i in range(5)]
    offsets = [m.offset for m in messages if m.channel == a]
    assert offsets == list(range(offsets[0], offsets[0] + 6))
    sub.cancel()


async def test_subscribe_messages_recovers_what_was_missed(stub: Stub, uid: str) -> None:
    channel = f"chat:{uid}"
    first = await send(stub, channel, "seen")
    await send(stub, channel, "missed-1")
    await send(stub, channel, "missed-2")
    request = chat_pb2.SubscriptionRequest(
        channels=[channel],
        since={channel: chat_pb2.StreamPosition(offset=first.offset, epoch=first.epoch)},
    )
    sub = stub.SubscribeMessages(request, metadata=auth())
    state = (await subscriptions(sub))[channel]
    assert state["recovered"] is True
    assert state["offset"] == first.offset + 2
    await send(stub, channel, "live")
    messages = await read(sub, 3)
    assert [m.content for m in messages] == ["missed-1", "missed-2", "live"]
    assert [m.offset for m in messages] == [first.offset + 1, first.offset + 2, first.offset + 3]
    assert {m.epoch for m in messages} == {first.epoch}
    sub.cancel()


async def test_subscribe_messages_says_when_history_cannot_recover(stub: Stub, uid: str) -> None:
    channel = f"small:{uid}"
    first = await send(stub, channel, "seen")
    for i in range(SMALL_HISTORY + 1):  # pushes the next publication out of the history
        await send(stub, channel, f"lost-{i}")
    request = chat_pb2.SubscriptionRequest(
        channels=[channel],
        since={channel: chat_pb2.StreamPosition(offset=first.offset, epoch=first.epoch)},
    )
    sub = stub.SubscribeMessages(request, metadata=auth())
    state = (await subscriptions(sub))[channel]
    assert state["recovered"] is False
    await send(stub, channel, "live")
    [message] = await read(sub)
    assert message.content == "live"  # no partial replay of the old publications
    sub.cancel()


# --- 3. client streaming ---------------------------------------------------------------------


async def test_upload_logs_logs_good_entries_and_counts_bad_ones(
    stub: Stub, grpc_node: GrpcNode, uid: str
) -> None:
    entries = [
        chat_pb2.LogEntry(level="info", message=f"{uid} one", fields={"screen": "rooms"}),
        chat_pb2.LogEntry(level="loud", message=f"{uid} bad level"),
        chat_pb2.LogEntry(level="WARN", message=f"{uid} two", timestamp=1_700_000_000_000),
        chat_pb2.LogEntry(level="error", message="   "),
        chat_pb2.LogEntry(level="error", message=f"{uid} three"),
    ]

    async def stream():  # type: ignore[no-untyped-def]
        for entry in entries:
            yield entry

    summary = await stub.UploadLogs(stream(), metadata=auth("carol"))
    assert (summary.accepted, summary.rejected) == (3, 2)
    assert [(r.index, r.reason) for r in summary.rejections] == [
        (1, "unknown level 'loud'"),
        (3, "message is required"),
    ]
    lines = [json.loads(line) for line in grpc_node.output().splitlines() if uid in line]
    logged = [(line["client_message"], line["level"]) for line in lines]
    assert logged == [(f"{uid} one", "info"), (f"{uid} two", "warning"), (f"{uid} three", "error")]
    assert {line["event"] for line in lines} == {"client_log"}
    assert {line["user"] for line in lines} == {"carol"}
    assert lines[0]["fields"] == {"screen": "rooms"}
    assert lines[1]["client_timestamp"] == 1_700_000_000_000


async def test_upload_logs_with_no_entries_counts_nothing(stub: Stub) -> None:
    call = stub.UploadLogs(metadata=auth())
    await call.done_writing()
    summary = await asyncio.wait_for(call, TIMEOUT)
    assert (summary.accepted, summary.rejected, len(summary.rejections)) == (0, 0, 0)


# --- 4. bidirectional streaming --------------------------------------------------------------


async def test_chat_publishes_each_message_and_receives_the_room(stub: Stub, uid: str) -> None:
    room = f"chat:{uid}"
    alice = stub.Chat(metadata=(*auth("alice"), (CHANNEL_KEY, room)))
    bob = stub.Chat(metadata=(*auth("bob"), (CHANNEL_KEY, room)))
    await subscriptions(alice)
    await subscriptions(bob)
    for i in range(3):
        await alice.write(chat_pb2.ChatMessage(content=f"alice {i}"))  # channel: the one joined
    own = await read(alice, 3)  # her own come back: they are published, in this order
    await bob.write(chat_pb2.ChatMessage(channel=room, content="bob 0"))
    own += await read(alice, 1)
    seen = await read(bob, 4)
    expected = [("alice", "alice 0"), ("alice", "alice 1"), ("alice", "alice 2"), ("bob", "bob 0")]
    assert [(m.user_id, m.content) for m in own] == expected
    assert [(m.user_id, m.content) for m in seen] == expected
    assert [m.offset for m in own] == [m.offset for m in seen]
    assert [m.offset for m in own] == list(range(own[0].offset, own[0].offset + 4))
    for call in (alice, bob):
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), TIMEOUT) is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK


async def test_chat_publishes_to_a_channel_it_did_not_join(stub: Stub, uid: str) -> None:
    joined, other = f"chat:{uid}-joined", f"chat:{uid}-other"
    listener = stub.SubscribeMessages(
        chat_pb2.SubscriptionRequest(channels=[other]), metadata=auth()
    )
    await subscriptions(listener)
    chat = stub.Chat(metadata=(*auth(), (CHANNEL_KEY, joined)))
    await subscriptions(chat)
    await chat.write(chat_pb2.ChatMessage(channel=other, content="elsewhere"))
    await chat.write(chat_pb2.ChatMessage(content="here"))
    [here] = await read(chat)
    assert (here.channel, here.content) == (joined, "here")  # "elsewhere" never came back
    [elsewhere] = await read(listener)
    assert (elsewhere.channel, elsewhere.content) == (other, "elsewhere")
    chat.cancel()
    listener.cancel()


async def test_chat_half_closed_ends_after_writing_what_is_queued(stub: Stub, uid: str) -> None:
    """The guide's Chat returns at EOF; kizuna first writes what the stream still has queued."""
    room = f"chat:{uid}"
    chat = stub.Chat(metadata=(*auth(), (CHANNEL_KEY, room)))
    await subscriptions(chat)
    for i in range(20):
        await chat.write(chat_pb2.ChatMessage(content=f"m{i}"))
    await chat.done_writing()
    messages = await read(chat, 20)
    assert [m.content for m in messages] == [f"m{i}" for i in range(20)]
    assert await asyncio.wait_for(chat.read(), TIMEOUT) is grpc.aio.EOF
    assert await chat.code() is grpc.StatusCode.OK


async def test_subscribing_while_others_publish_misses_nothing(stub: Stub, uid: str) -> None:
    """Publications that land while a subscription is being set up come right after it."""
    channel = f"chat:{uid}"
    first = await send(stub, channel, "start")
    done = asyncio.Event()

    async def publish() -> int:
        count = 0
        while not done.is_set() or count < 20:
            await send(stub, channel, f"p{count}")
            count += 1
        return count

    publisher = asyncio.ensure_future(publish())
    subs = []
    for _ in range(10):
        request = chat_pb2.SubscriptionRequest(
            channels=[channel],
            since={channel: chat_pb2.StreamPosition(offset=first.offset, epoch=first.epoch)},
        )
        subs.append(stub.SubscribeMessages(request, metadata=auth()))
        await subscriptions(subs[-1])
    done.set()
    count = await publisher
    for sub in subs:
        offsets = [m.offset for m in await read(sub, count)]
        assert offsets == list(range(first.offset + 1, first.offset + 1 + count))
        sub.cancel()
