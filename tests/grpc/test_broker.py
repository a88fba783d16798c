"""gRPC over the Redis broker: the bus spans nodes, and a broker outage is UNAVAILABLE (113)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from kizuna.protocol.codes import ErrorCode
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.grpc.clients import NativeClient, error_code, rpc_error
from tests.grpc.conftest import GrpcNode, auth, token
from tests.support.processes import RedisProcess


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    """A Redis of this test's own: the test kills it."""
    with RedisProcess() as process:
        yield process


@pytest.fixture
def redis_node(redis: RedisProcess) -> Iterator[GrpcNode]:
    node = GrpcNode(env={"KIZUNA_BROKER": redis.url})
    try:
        yield node.start()
    finally:
        node.stop()
        node.close_log()


async def test_grpc_reaches_a_websocket_client_on_another_node(
    redis: RedisProcess, redis_node: GrpcNode
) -> None:
    other = GrpcNode(env={"KIZUNA_BROKER": redis.url})
    other.start()
    try:
        bob = await NativeClient.open(other.ws_url, token("bob"))
        await bob.call("subscribe", channel="chat:across")
        async with grpc.aio.insecure_channel(redis_node.grpc_target) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            offsets = []
            for i in range(3):
                response = await stub.SendMessage(
                    chat_pb2.ChatMessage(channel="chat:across", content=f"m{i}"), metadata=auth()
                )
                offsets.append(response.offset)
        pubs = []
        for _ in range(50):  # delivery crosses Redis Pub/Sub: poll with ping barriers
            pubs += await bob.publications("chat:across")
            if len(pubs) >= 3:
                break
        assert [(p["data"]["content"], p["offset"]) for p in pubs] == [
            (f"m{i}", offsets[i]) for i in range(3)
        ]
        await bob.aclose()
    finally:
        other.stop()
        other.close_log()


async def test_a_broker_outage_is_unavailable(redis: RedisProcess, redis_node: GrpcNode) -> None:
    async with grpc.aio.insecure_channel(redis_node.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        message = chat_pb2.ChatMessage(channel="chat:outage", content="x")
        await stub.SendMessage(message, metadata=auth())
        redis.kill()
        error = await rpc_error(stub.SendMessage(message, metadata=auth()))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error_code(error) == ErrorCode.BROKER_UNAVAILABLE
