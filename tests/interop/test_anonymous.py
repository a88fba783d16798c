"""In a namespace that admits anonymous clients, every edge lets them publish alike.

``allow_anonymous`` lets "connections without a token … subscribe, read, and
publish if allowed" (docs/protocol.md §13), and ``POST /connection/publish``
promises "the same channel rules as a WebSocket publish". So an anonymous
publication must be accepted by each edge that can publish — native
WebSocket, HTTP, Socket.IO, gRPC SendMessage and Chat — and reach an
anonymous subscriber on another transport (here SSE) with an empty user.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from kizuna.transports.grpc import CHANNEL_KEY
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.e2e.clients import PyClient
from tests.grpc.clients import subscriptions
from tests.grpc.conftest import GrpcNode
from tests.interop.subscribers import TIMEOUT, SseSubscriber
from tests.socketio.clients import SioDriver

CONFIG = """
[namespaces.chat]

[namespaces.public]
allow_anonymous = true
history_size = 10
"""


@pytest.fixture(scope="module")
def anonymous_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcNode]:
    config = tmp_path_factory.mktemp("anonymous") / "kizuna.toml"
    config.write_text(CONFIG)
    node = GrpcNode(args=["--config", str(config)])
    try:
        yield node.start()
    finally:
        node.stop()


async def publish_anonymously(node: GrpcNode, channel: str) -> dict[str, Any]:
    """Each edge's answer to one anonymous publication: its offset, or how it refused."""
    room = channel.partition(":")[2]
    outcome: dict[str, Any] = {}

    ws = await PyClient.open(node.ws_url)
    try:
        await ws.connect()
        reply = await ws.request("publish", {"channel": channel, "data": {"content": "websocket"}})
        outcome["websocket"] = reply.get("result", reply.get("error"))
    finally:
        await ws.aclose()

    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
        response = await http.post(
            f"{node.url}/connection/publish",
            json={"channel": channel, "data": {"content": "http"}},
        )
        outcome["http"] = response.json().get("result", response.json().get("error"))

    driver = await SioDriver.start()
    try:
        sock = await driver.open(f"{node.url}/public", transports=["websocket"])
        assert sock.connected, sock.first
        ack = await sock.ack("message", {"roomId": room, "content": "socket.io"})
        outcome["socket.io"] = ack if ack["ok"] else ack["error"]
    finally:
        await driver.aclose()

    async with grpc.aio.insecure_channel(node.grpc_target) as channel_:
        stub = chat_pb2_grpc.ChatServiceStub(channel_)
        try:
            response = await stub.SendMessage(
                chat_pb2.ChatMessage(channel=channel, content="grpc SendMessage"), timeout=TIMEOUT
            )
            outcome["grpc SendMessage"] = {"offset": response.offset}
        except grpc.aio.AioRpcError as exc:
            outcome["grpc SendMessage"] = {"status": exc.code().name}
        chat = stub.Chat(metadata=((CHANNEL_KEY, channel),))
        try:
            await subscriptions(chat)
            await chat.write(chat_pb2.ChatMessage(content="grpc Chat"))
            echo = await chat.read()
            outcome["grpc Chat"] = {"offset": echo.offset}
        except grpc.aio.AioRpcError as exc:
            outcome["grpc Chat"] = {"status": exc.code().name}
        finally:
            chat.cancel()
    return outcome


async def test_every_edge_takes_an_anonymous_publication(
    anonymous_node: GrpcNode, uid: str
) -> None:
    channel = f"public:anon-{uid}"
    async with contextlib.AsyncExitStack() as stack:
        reader = await SseSubscriber.start("sse anonymous", anonymous_node.url, None, channel)
        stack.push_async_callback(reader.aclose)
        outcome = await publish_anonymously(anonymous_node, channel)
        refused = {edge: answer for edge, answer in outcome.items() if "offset" not in answer}
        assert not refused, f"edges that refused an anonymous publication: {refused}"
        accepted = sorted(answer["offset"] for answer in outcome.values())
        assert accepted == list(range(1, len(outcome) + 1))
        await reader.until(lambda d: d.offset == len(outcome))
        assert [d.data["content"] for d in reader.received] == list(outcome)
        assert {d.sender for d in reader.received} == {""}
