"""One channel, every transport: each subscriber receives each publication once, in order.

Subscribers, one per client kind, all in channel ``chat:interop-<uid>``:
native WebSocket (Python ``websockets``, Node ``ws``), SSE (httpx, npm
``eventsource``), long-polling (httpx with a cursor), Socket.IO (the npm
``socket.io-client`` over websocket and over polling), gRPC
(``SubscribeMessages`` and the bidirectional ``Chat``).

Publishers, one per edge that can publish: the native ``publish`` command,
``POST /connection/publish``, Socket.IO ``message``, gRPC ``SendMessage``, a
gRPC ``Chat`` stream write, and the server API's ``/api/publish``.

Rounds: one publication per edge, one after another (the offsets must follow
that order); then every edge publishes a burst at the same time (the broker
picks the order; every subscriber must see the one it picked); then an end
marker. Each subscriber must then hold exactly offsets 1..N, in that order,
each carrying the payload its publisher sent — ``{userId, content,
timestamp}``, the shape the Socket.IO and gRPC edges publish — with content
that is hard to carry (non-ASCII, quotes, backslash, newline, U+2028, NEL,
a record separator, an emoji, markup).

The same exchange runs on one node and on two nodes sharing a private Redis,
subscribers and publishers spread over both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx

from kizuna.transports.grpc_gen import chat_pb2_grpc
from tests.e2e.clients import NodeClient, PyClient, WireClient
from tests.grpc.conftest import GrpcNode
from tests.interop.publishers import (
    ApiPublisher,
    GrpcChatPublisher,
    GrpcUnaryPublisher,
    HttpPublisher,
    NativePublisher,
    Publisher,
    Sent,
    SocketIOPublisher,
)
from tests.interop.subscribers import (
    TIMEOUT,
    EventSourceSubscriber,
    GrpcChat,
    GrpcSubscriber,
    LongPollSubscriber,
    NativeSubscriber,
    SocketIOSubscriber,
    SseSubscriber,
    Subscriber,
)
from tests.socketio.clients import SioDriver
from tests.support.processes import API_KEY

BURST = 3
"""Messages each edge publishes in the concurrent round."""


def content(edge: str, n: int) -> str:
    """A message body that each hop must carry unchanged."""
    return f'{edge} #{n}: 絆 “quoted” "q" back\\slash\tnl\nls\u2028nel\x85rs\x1e 🚀 <b>&amp;</b>'


class Scene:
    """Every subscriber and publisher of one channel, spread over ``nodes``.

    Index ``i`` in the placement below means ``nodes[i % len(nodes)]``: with one
    node everything is on it; with two, each transport family has a member
    on each node, and every publisher reaches subscribers on the other node.
    """

    def __init__(self, nodes: list[GrpcNode], channel: str, stack: contextlib.AsyncExitStack):
        self.nodes = nodes
        self.channel = channel
        self.stack = stack
        self.subscribers: list[Subscriber] = []
        self.publishers: list[Publisher] = []
        self.api: ApiPublisher | None = None
        self.longpoll: LongPollSubscriber | None = None
        self.http = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
        stack.push_async_callback(self.http.aclose)

    def at(self, i: int) -> GrpcNode:
        return self.nodes[i % len(self.nodes)]

    async def open(self) -> None:
        stack, channel, at = self.stack, self.channel, self.at
        http = self.http
        grpcs = [
            await stack.enter_async_context(grpc.aio.insecure_channel(node.grpc_target))
            for node in self.nodes
        ]
        driver = await SioDriver.start()
        stack.push_async_callback(driver.aclose)

        async def sio_pair() -> list[Subscriber]:
            # One driver process: its sockets are opened one after the other.
            ws = await SocketIOSubscriber.start(
                "socket.io websocket", driver, at(0).url, "websocket", "sio-ws", channel
            )
            polling = await SocketIOSubscriber.start(
                "socket.io polling", driver, at(1).url, "polling", "sio-poll", channel
            )
            return [ws, polling]

        async def one(start: Awaitable[Subscriber]) -> list[Subscriber]:
            return [await start]

        async def native(name: str, open_client: Awaitable[WireClient], user: str) -> Subscriber:
            return await NativeSubscriber.start(name, await open_client, user, channel)

        starts: list[Awaitable[list[Subscriber]]] = [
            one(native("websocket python", PyClient.open(at(0).ws_url), "ws-py")),
            one(native("websocket node ws", NodeClient.open(at(1).ws_url), "ws-node")),
            one(SseSubscriber.start("sse httpx", at(0).url, "sse-py", channel)),
            one(EventSourceSubscriber.start("sse eventsource", at(1).url, "sse-node", channel)),
            one(LongPollSubscriber.start("long-poll httpx", [at(1).url, at(0).url], "lp", channel)),
            sio_pair(),
            one(GrpcSubscriber.start("grpc SubscribeMessages", grpcs[0], "grpc-sub", channel)),
            one(GrpcChat.open("grpc Chat", grpcs[-1], "grpc-chat", channel)),
        ]
        results = await asyncio.gather(*starts, return_exceptions=True)
        for result in results:
            if isinstance(result, list):
                for sub in result:
                    stack.push_async_callback(sub.aclose)
                    self.subscribers.append(sub)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        subs = {sub.name: sub for sub in self.subscribers}
        lp = subs["long-poll httpx"]
        assert isinstance(lp, LongPollSubscriber)
        self.longpoll = lp

        ws_py, sio_ws, chat = (
            subs["websocket python"],
            subs["socket.io websocket"],
            subs["grpc Chat"],
        )
        assert isinstance(ws_py, NativeSubscriber)
        assert isinstance(sio_ws, SocketIOSubscriber)
        assert isinstance(chat, GrpcChat)
        self.api = ApiPublisher("server api", channel, "backend", http=http, base_url=at(0).url)
        self.publishers = [
            NativePublisher("websocket", channel, "ws-py", client=ws_py.client),
            HttpPublisher("http", channel, "http-pub", http=http, base_url=at(1).url),
            SocketIOPublisher("socket.io", channel, "sio-ws", sock=sio_ws.sock),
            GrpcUnaryPublisher(
                "grpc SendMessage",
                channel,
                "grpc-unary",
                stub=chat_pb2_grpc.ChatServiceStub(grpcs[-1]),
            ),
            GrpcChatPublisher("grpc Chat", channel, "grpc-chat", chat=chat),
            self.api,
        ]

    async def present_users(self) -> list[list[str]]:
        """Who each node lists in the channel's presence (shared through the broker)."""
        users = []
        for node in self.nodes:
            response = await self.http.post(
                f"{node.url}/api/presence",
                json={"channel": self.channel},
                headers={"Authorization": f"apikey {API_KEY}"},
            )
            assert response.status_code == 200, response.text
            clients = response.json()["result"]["clients"].values()
            users.append(sorted(client["user"] for client in clients))
        return users


async def collect(sub: Subscriber, done: Callable[[Any], bool]) -> None:
    try:
        await sub.until(done)
    except TimeoutError:
        got = [d.offset for d in sub.received]
        raise AssertionError(
            f"{sub.name}: the end marker never arrived; got offsets {got}"
        ) from None


def check(subscribers: list[Subscriber], sent: list[Sent]) -> None:
    """Every subscriber holds offsets 1..N in order, each with its publisher's payload."""
    by_offset = {s.offset: s for s in sent}
    assert sorted(by_offset) == list(range(1, len(sent) + 1)), "publishers got overlapping offsets"
    server_stamps: dict[int, Any] = {}  # Socket.IO's payloads: the server picked the timestamp
    problems = []
    for sub in subscribers:
        offsets = [d.offset for d in sub.received]
        if offsets != sorted(by_offset):
            problems.append(f"{sub.name}: received offsets {offsets}")
            continue
        for d in sub.received:
            s = by_offset[d.offset]
            expected = dict(s.data)
            if expected["timestamp"] is None:
                assert s.window is not None
                stamp = server_stamps.setdefault(d.offset, d.data.get("timestamp"))
                low, high = s.window
                if not (isinstance(stamp, int) and low <= stamp <= high):
                    problems.append(
                        f"{sub.name}: {s.publisher} timestamp {stamp} not in {s.window}"
                    )
                expected["timestamp"] = stamp
            if d.data != expected:
                problems.append(f"{sub.name}: offset {d.offset} from {s.publisher}: {d.data!r}")
            if sub.carries_epoch and d.epoch != s.epoch:
                problems.append(f"{sub.name}: offset {d.offset} epoch {d.epoch} != {s.epoch}")
            if sub.carries_sender and d.sender != s.sender:
                problems.append(f"{sub.name}: offset {d.offset} info.user {d.sender!r}")
    assert not problems, "\n".join(problems)


async def exchange(nodes: list[GrpcNode], uid: str) -> None:
    channel = f"chat:interop-{uid}"
    async with contextlib.AsyncExitStack() as stack:
        scene = Scene(nodes, channel, stack)
        await scene.open()
        assert len(scene.subscribers) == 9
        for sub in scene.subscribers:
            assert sub.start_offset in (None, 0), (sub.name, sub.start_offset)
        # Every edge that holds a connection is a client with its token's identity, seen by
        # every node (long-polling holds none).
        present = sorted(
            [
                "ws-py",
                "ws-node",
                "sse-py",
                "sse-node",
                "sio-ws",
                "sio-poll",
                "grpc-sub",
                "grpc-chat",
            ]
        )
        assert await scene.present_users() == [present] * len(nodes)

        # 1. One publication per edge, in turn: offsets follow the order of publishing.
        sent: list[Sent] = []
        for pub in scene.publishers:
            sent += await pub.burst([content(pub.name, 0)])
        assert [s.offset for s in sent] == list(range(1, len(scene.publishers) + 1)), sent

        # 2. Every edge at once; each one's own messages keep their order.
        bursts = await asyncio.gather(
            *(
                pub.burst([content(pub.name, n) for n in range(1, BURST + 1)])
                for pub in scene.publishers
            )
        )
        for burst in bursts:
            offsets = [s.offset for s in burst]
            assert offsets == sorted(offsets), (burst[0].publisher, offsets)
            sent += burst

        # 3. The end marker: the channel's order puts it after everything above.
        assert scene.api is not None
        [end] = await scene.api.burst(["end"])
        sent.append(end)
        assert end.offset == len(sent) == len(scene.publishers) * (1 + BURST) + 1

        for sub in scene.subscribers:
            await collect(sub, lambda d: d.offset >= end.offset)
        check(scene.subscribers, sent)
        assert {s.epoch for s in sent} == {sent[0].epoch}
        assert scene.longpoll is not None
        assert set(scene.longpoll.polled) == {node.url for node in nodes}


async def test_every_transport_one_node(one_node: list[GrpcNode], uid: str) -> None:
    await exchange(one_node, uid)


async def test_every_transport_two_nodes_on_redis(two_nodes: list[GrpcNode], uid: str) -> None:
    await exchange(two_nodes, uid)
