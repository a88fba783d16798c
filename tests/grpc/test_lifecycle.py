"""How the server ends gRPC streams: limits, token expiry, shutdown — each with its codes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import grpc
import pytest

from kizuna.protocol.codes import DisconnectCode
from kizuna.transports.grpc import CHANNEL_KEY, RECONNECT_DELAY_KEY
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.grpc.clients import (
    TIMEOUT,
    disconnect_code,
    read,
    rpc_error,
    subscriptions,
    trailing,
)
from tests.grpc.conftest import GrpcNode, auth

Stub = chat_pb2_grpc.ChatServiceStub


@pytest.fixture
def own_node() -> Iterator[GrpcNode]:
    """A node of this test's own (two connections at most, a short drain): tests stop it."""
    node = GrpcNode(env={"KIZUNA_MAX_CONNECTIONS": "2", "KIZUNA_DRAIN_WINDOW": "0.2"})
    try:
        yield node.start()
    finally:
        node.stop()
        node.close_log()


async def test_a_stream_past_the_connection_limit_is_refused(own_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(own_node.grpc_target) as channel:
        stub = Stub(channel)
        request = chat_pb2.SubscriptionRequest(channels=["chat:limits"])
        first = stub.SubscribeMessages(request, metadata=auth())
        second = stub.Chat(metadata=(*auth(), (CHANNEL_KEY, "chat:limits")))
        await subscriptions(first)
        await subscriptions(second)
        error = await rpc_error(stub.SubscribeMessages(request, metadata=auth()).read())
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert disconnect_code(error) == DisconnectCode.CONNECTION_LIMIT
        # Unary calls are no connections: they still go through.
        await stub.SendMessage(
            chat_pb2.ChatMessage(channel="chat:limits", content="x"), metadata=auth()
        )
        assert [m.content for m in await read(first)] == ["x"]
        second.cancel()
        await asyncio.sleep(0.1)  # the server notices the cancellation
        third = stub.SubscribeMessages(request, metadata=auth())
        await subscriptions(third)  # room again
        first.cancel()
        third.cancel()


async def test_shutdown_writes_what_is_queued_then_ends_streams_with_3001(
    own_node: GrpcNode,
) -> None:
    async with grpc.aio.insecure_channel(own_node.grpc_target) as channel:
        stub = Stub(channel)
        sub = stub.SubscribeMessages(
            chat_pb2.SubscriptionRequest(channels=["chat:bye"]), metadata=auth()
        )
        chat = stub.Chat(metadata=(*auth(), (CHANNEL_KEY, "chat:bye")))
        await subscriptions(sub)
        await subscriptions(chat)
        for i in range(3):
            await stub.SendMessage(
                chat_pb2.ChatMessage(channel="chat:bye", content=f"m{i}"), metadata=auth()
            )
        own_node.signal(signal.SIGTERM)
        for call in (sub, chat):
            assert [m.content for m in await read(call, 3)] == ["m0", "m1", "m2"]
            error = await rpc_error(call.read())
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert disconnect_code(error) == DisconnectCode.SHUTDOWN
            delay = trailing(error, RECONNECT_DELAY_KEY)  # the drain's jittered advice
            assert delay is not None
            assert 0 <= int(delay) <= 1000
    assert own_node.process is not None
    assert await asyncio.to_thread(own_node.process.wait, TIMEOUT) == 0  # a drained SIGTERM
    assert "Traceback" not in own_node.output()


async def test_a_stream_ends_when_its_token_expires(stub: Stub, uid: str) -> None:
    # exp is whole seconds: ttl=1 left 0–1 s, sometimes too little to subscribe under load.
    sub = stub.SubscribeMessages(
        chat_pb2.SubscriptionRequest(channels=[f"chat:{uid}"]), metadata=auth(ttl=2)
    )
    await subscriptions(sub)
    error = await rpc_error(sub.read())  # within about two seconds
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert disconnect_code(error) == DisconnectCode.TOKEN_EXPIRED
