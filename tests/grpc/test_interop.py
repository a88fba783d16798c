"""gRPC and the native WebSocket protocol share one channel bus: each sees the other's
publications once, in order, with the same offsets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kizuna.transports.grpc import CHANNEL_KEY
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.grpc.clients import NativeClient, read, subscriptions
from tests.grpc.conftest import GrpcNode, auth, token

Stub = chat_pb2_grpc.ChatServiceStub


@pytest.fixture
async def bob(grpc_node: GrpcNode) -> AsyncIterator[NativeClient]:
    client = await NativeClient.open(grpc_node.ws_url, token("bob"))
    yield client
    await client.aclose()


async def test_grpc_publications_reach_websocket_subscribers(
    stub: Stub, bob: NativeClient, uid: str
) -> None:
    room = f"chat:{uid}"
    await bob.call("subscribe", channel=room)
    sent = []
    for i in range(3):
        response = await stub.SendMessage(
            chat_pb2.ChatMessage(channel=room, content=f"unary {i}"), metadata=auth("alice")
        )
        sent.append((f"unary {i}", response.offset, response.timestamp))
    chat = stub.Chat(metadata=(*auth("alice"), (CHANNEL_KEY, room)))
    await subscriptions(chat)
    for i in range(3):
        await chat.write(chat_pb2.ChatMessage(content=f"stream {i}", timestamp=1000 + i))
    for echo in await read(chat, 3):  # back on the Chat stream: published, so queued for bob
        sent.append((echo.content, echo.offset, echo.timestamp))
    chat.cancel()

    pubs = await bob.publications(room)
    assert [(p["data"]["content"], p["offset"], p["data"]["timestamp"]) for p in pubs] == sent
    assert [s[0] for s in sent] == [f"unary {i}" for i in range(3)] + [
        f"stream {i}" for i in range(3)
    ]
    assert [s[1] for s in sent] == list(range(sent[0][1], sent[0][1] + 6))
    for pub in pubs:
        assert set(pub["data"]) == {"userId", "content", "timestamp"}
        assert pub["data"]["userId"] == pub["info"]["user"] == "alice"


async def test_websocket_publications_reach_grpc_subscribers(
    stub: Stub, bob: NativeClient, uid: str
) -> None:
    room = f"chat:{uid}"
    sub = stub.SubscribeMessages(chat_pb2.SubscriptionRequest(channels=[room]), metadata=auth())
    chat = stub.Chat(metadata=(*auth("carol"), (CHANNEL_KEY, room)))
    await subscriptions(sub)
    await subscriptions(chat)
    published = []
    for i in range(5):
        data = {"userId": "bob", "content": f"ws {i}", "timestamp": 1_700_000_000_000 + i}
        result = await bob.call("publish", channel=room, data=data)
        published.append((f"ws {i}", result["offset"], 1_700_000_000_000 + i))
    await bob.call("publish", channel=room, data={"text": "not a chat message"})
    await bob.call("publish", channel=room, data={"userId": "bob", "content": "last"})

    for call in (sub, chat):
        messages = await read(call, 7)
        assert [(m.content, m.offset, m.timestamp) for m in messages[:5]] == published
        assert {(m.user_id, m.channel, m.epoch) for m in messages} == {
            ("bob", room, messages[0].epoch)
        }
        assert messages[5].content == '{"text":"not a chat message"}'
        assert messages[6].content == "last"  # and nothing twice in between
        assert [m.offset for m in messages] == list(range(published[0][1], published[0][1] + 7))
        call.cancel()
