"""Every kizuna edge as a subscriber of one channel, each driven by a real client.

Why one adapter per edge: the interop test asks one question of every
transport at once — does each subscriber receive each publication once, in
the channel's order, with the content intact? — so each edge's client is
wrapped to answer it in the same terms (:class:`Delivery`). Nothing here
imitates a server or a client: the clients are Python ``websockets``, Node
``ws``, httpx (SSE and long-poll), the npm ``eventsource`` and
``socket.io-client`` packages, and grpcio's ``grpc.aio``.

A subscriber's ``start`` returns only once the server confirmed the
subscription in that edge's own terms — a subscribe reply, the stream's own
``join`` event, a ``joinRoom`` acknowledgement, gRPC initial metadata, a
long-poll cursor — so a test may publish right after, without sleeping.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from kizuna.transports.grpc import CHANNEL_KEY
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.e2e.clients import WireClient, token
from tests.grpc.clients import subscriptions
from tests.socketio.clients import SioDriver, SioSocket

__all__ = [
    "TIMEOUT",
    "Delivery",
    "EventSourceSubscriber",
    "GrpcChat",
    "GrpcSubscriber",
    "LongPollSubscriber",
    "NativeSubscriber",
    "SocketIOSubscriber",
    "SseSubscriber",
    "Subscriber",
    "chat_payload",
    "sse_events",
]

TIMEOUT = 10.0
"""Seconds one expectation (a confirmation, an acknowledgement, a delivery) may take."""

EVENTSOURCE_DIR = Path(__file__).resolve().parent.parent / "node" / "eventsource"

Payload = dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """One publication as a subscriber's edge presented it."""

    offset: int
    data: Payload
    """The chat payload ``{userId, content, timestamp}``, as this edge carries it."""
    epoch: str | None = None
    """None where the edge does not carry epochs (Socket.IO's ``newMessage``)."""
    sender: str | None = None
    """``info.user`` of a native push; None for a server API publication."""


def chat_payload(user: str, content: str, timestamp: int) -> Payload:
    return {"userId": user, "content": content, "timestamp": timestamp}


class Subscriber(abc.ABC):
    """What the test asks of every subscribing edge; ``received`` keeps arrival order."""

    name: str
    carries_epoch = True
    carries_sender = False

    def __init__(self, name: str, channel: str) -> None:
        self.name = name
        self.channel = channel
        self.received: list[Delivery] = []
        self.start_offset: int | None = None
        """The channel's offset the subscription started at, where the edge reports it."""

    @abc.abstractmethod
    async def _next(self) -> Delivery:
        """The next publication of ``channel`` from the wire."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def until(self, predicate: Callable[[Delivery], bool], within: float = TIMEOUT) -> None:
        """Read until a delivery (already read or still to come) matches ``predicate``."""
        if any(predicate(d) for d in self.received):
            return
        async with asyncio.timeout(within):
            while True:
                delivery = await self._next()
                self.received.append(delivery)
                if predicate(delivery):
                    return

    def _from_push(self, push: dict[str, Any]) -> Delivery:
        """A native ``pub`` push (WebSocket, SSE and long-poll carry the same JSON)."""
        assert push.get("push") == "pub", push
        assert push["channel"] == self.channel, push
        info = push.get("info")
        return Delivery(push["offset"], push["data"], push.get("epoch"), info and info["user"])


class NativeSubscriber(Subscriber):
    """kizuna's native protocol over WebSocket (Python ``websockets`` or Node ``ws``)."""

    carries_sender = True

    def __init__(self, name: str, channel: str, client: WireClient) -> None:
        super().__init__(name, channel)
        self.client = client

    @classmethod
    async def start(
        cls, name: str, client: WireClient, user: str, channel: str
    ) -> NativeSubscriber:
        try:
            await client.connect(token(user))
            result = await client.call("subscribe", channel=channel)
        except BaseException:
            await client.aclose()
            raise
        sub = cls(name, channel, client)
        sub.start_offset = result["offset"]
        return sub

    async def _next(self) -> Delivery:
        return self._from_push(await self.client.expect_push("pub", self.channel, TIMEOUT))

    async def aclose(self) -> None:
        await self.client.aclose()


_LINE_END = re.compile(r"\r\n|\r|\n")


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of an SSE stream, split into lines the way the spec says.

    The WHATWG rule: a line ends at CRLF, LF or CR — nothing else. httpx's
    ``aiter_lines`` also splits at U+2028, U+0085 and the other ``str.splitlines``
    separators, which JSON may carry raw inside a string; this reader does not.
    """
    buffer, kind = "", ""
    data: list[str] = []
    async for text in response.aiter_text():
        buffer += text
        while (end := _LINE_END.search(buffer)) is not None:
            if end.group() == "\r" and end.end() == len(buffer):
                break  # the \n of a CRLF may be in the next chunk
            line, buffer = buffer[: end.start()], buffer[end.end() :]
            if not line:
                if data:
                    yield kind or "message", "\n".join(data)
                kind, data = "", []
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


class SseSubscriber(Subscriber):
    """``GET /connection/sse`` read incrementally by httpx."""

    carries_sender = True

    def __init__(self, name: str, channel: str, stack: contextlib.AsyncExitStack) -> None:
        super().__init__(name, channel)
        self._stack = stack
        self._events: AsyncIterator[tuple[str, str]] | None = None

    @classmethod
    async def start(cls, name: str, base_url: str, user: str | None, channel: str) -> SseSubscriber:
        """``user`` None: an anonymous stream (no token)."""
        stack = contextlib.AsyncExitStack()
        sub = cls(name, channel, stack)
        try:
            http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
            )
            url = f"{base_url}/connection/sse"
            params = {"channels": channel}
            if user is not None:
                params["token"] = token(user)
            response = await stack.enter_async_context(http.stream("GET", url, params=params))
            assert response.status_code == 200, await response.aread()
            sub._events = sse_events(response)
            await sub._await_own_join()
        except BaseException:
            await stack.aclose()
            raise
        return sub

    async def _await_own_join(self) -> None:
        assert self._events is not None
        client = None
        async with asyncio.timeout(TIMEOUT):
            async for kind, data in self._events:
                message = json.loads(data)
                if kind == "connected":
                    client = message["client"]
                elif kind == "join" and message["info"]["client"] == client:
                    return  # the node announces a subscriber only once it is in the hub
                elif kind == "pub":
                    self.received.append(self._from_push(message))
        raise AssertionError(f"{self.name}: the stream ended before its own join")

    async def _next(self) -> Delivery:
        assert self._events is not None
        async for kind, data in self._events:
            if kind == "pub":
                return self._from_push(json.loads(data))
            assert kind in ("join", "leave"), (kind, data)
        raise AssertionError(f"{self.name}: the stream ended")

    async def aclose(self) -> None:
        await self._stack.aclose()


class EventSourceSubscriber(Subscriber):
    """The npm ``eventsource`` package (``tests/node/eventsource/sse_client.mjs``)."""

    carries_sender = True

    def __init__(self, name: str, channel: str, process: asyncio.subprocess.Process) -> None:
        super().__init__(name, channel)
        self.process = process

    @classmethod
    async def start(
        cls, name: str, base_url: str, user: str, channel: str
    ) -> EventSourceSubscriber:
        node = shutil.which("node")
        if node is None or not (EVENTSOURCE_DIR / "node_modules" / "eventsource").is_dir():
            pytest.fail("needs node and `npm ci --prefix tests/node/eventsource`")
        url = str(
            httpx.URL(
                f"{base_url}/connection/sse", params={"channels": channel, "token": token(user)}
            )
        )
        # Far more publications and time than the test uses: the test ends the process.
        process = await asyncio.create_subprocess_exec(
            node,
            str(EVENTSOURCE_DIR / "sse_client.mjs"),
            url,
            "1000000",
            "600000",
            cwd=EVENTSOURCE_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        sub = cls(name, channel, process)
        try:
            client = None
            async with asyncio.timeout(TIMEOUT):
                while True:
                    event = await sub._event()
                    if event["event"] == "connected":
                        client = event["data"]["client"]
                    elif event["event"] == "join" and event["data"]["info"]["client"] == client:
                        break
                    elif event["event"] == "pub":
                        sub.received.append(sub._from_push(event["data"]))
        except BaseException:
            await sub.aclose()
            raise
        return sub

    async def _event(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            stderr = await self.process.stderr.read()
            raise AssertionError(f"{self.name}: eventsource client exited: {stderr.decode()}")
        event: dict[str, Any] = json.loads(line)
        return event

    async def _next(self) -> Delivery:
        while True:
            event = await self._event()
            if event["event"] == "pub":
                return self._from_push(event["data"])
            assert event["event"] in ("join", "leave"), event

    async def aclose(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()


class LongPollSubscriber(Subscriber):
    """``GET /connection/poll`` with a cursor, polling in the background the whole time.

    With several base URLs it turns to the next node on every request: the
    cursor carries the position, so any node can answer it.
    """

    carries_sender = True

    def __init__(
        self, name: str, channel: str, http: httpx.AsyncClient, bases: list[str], user: str
    ) -> None:
        super().__init__(name, channel)
        self._http = http
        self._bases = bases
        self._headers = {"Authorization": f"Bearer {token(user)}"}
        self._cursor = ""
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.polled: list[str] = []
        """The base URL of every request made, in order."""

    @classmethod
    async def start(
        cls, name: str, bases: list[str], user: str, channel: str
    ) -> LongPollSubscriber:
        http = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
        sub = cls(name, channel, http, bases, user)
        try:
            first = await sub._poll(timeout=0)  # the cursor: everything after this moment
            assert first == [], first
        except BaseException:
            await http.aclose()
            raise
        sub._task = asyncio.create_task(sub._run())
        return sub

    async def _poll(self, timeout: float) -> list[dict[str, Any]]:
        base = self._bases[len(self.polled) % len(self._bases)]
        self.polled.append(base)
        params: dict[str, str | float] = {
            "channels": self.channel,
            "cursor": self._cursor,
            "timeout": timeout,
        }
        response = await self._http.get(
            f"{base}/connection/poll", params=params, headers=self._headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["gaps"] == [], body
        self._cursor = body["cursor"]
        publications: list[dict[str, Any]] = body["publications"]
        return publications

    async def _run(self) -> None:
        while True:
            for push in await self._poll(timeout=5):
                self._queue.put_nowait(push)

    async def _next(self) -> Delivery:
        assert self._task is not None
        getter = asyncio.ensure_future(self._queue.get())
        await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():  # the poller failed: its exception fails the test
            getter.cancel()
            self._task.result()
        return self._from_push(getter.result())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()


class SocketIOSubscriber(Subscriber):
    """A real ``socket.io-client`` socket in room ``R`` of ``/chat`` (channel ``chat:R``)."""

    carries_epoch = False

    def __init__(self, name: str, channel: str, sock: SioSocket) -> None:
        super().__init__(name, channel)
        self.sock = sock
        self.room = channel.partition(":")[2]

    @classmethod
    async def start(
        cls, name: str, driver: SioDriver, base_url: str, transport: str, user: str, channel: str
    ) -> SocketIOSubscriber:
        sock = await driver.open(
            f"{base_url}/chat", auth={"token": token(user)}, transports=[transport]
        )
        assert sock.connected, sock.first
        sub = cls(name, channel, sock)
        joined = await sock.ack("joinRoom", sub.room)
        assert joined["ok"] is True and joined["channel"] == channel, joined
        sub.start_offset = joined["offset"]
        assert await sock.transport() == transport
        return sub

    async def _next(self) -> Delivery:
        data, meta = await self.sock.expect_event("newMessage")
        assert meta["room"] == self.room, meta
        return Delivery(meta["offset"], data)

    async def aclose(self) -> None:
        await self.sock.close()


class GrpcSubscriber(Subscriber):
    """A gRPC stream that delivers ChatMessages: SubscribeMessages, or Chat (see GrpcChat)."""

    def __init__(self, name: str, channel: str, call: Any) -> None:
        super().__init__(name, channel)
        self.call = call

    @classmethod
    async def start(
        cls, name: str, channel_: grpc.aio.Channel, user: str, channel: str
    ) -> GrpcSubscriber:
        stub = chat_pb2_grpc.ChatServiceStub(channel_)
        call = stub.SubscribeMessages(
            chat_pb2.SubscriptionRequest(channels=[channel]),
            metadata=(("authorization", f"Bearer {token(user)}"),),
        )
        return await cls._confirmed(cls(name, channel, call))

    @staticmethod
    async def _confirmed(sub: GrpcSubscriber) -> Any:
        try:
            sub.start_offset = (await subscriptions(sub.call))[sub.channel]["offset"]
        except BaseException:
            await sub.aclose()
            raise
        return sub

    async def _next(self) -> Delivery:
        message = await self.call.read()
        assert message is not grpc.aio.EOF, f"{self.name}: the stream ended"
        assert message.channel == self.channel, message
        data = chat_payload(message.user_id, message.content, message.timestamp)
        return Delivery(message.offset, data, message.epoch)

    async def aclose(self) -> None:
        self.call.cancel()


class GrpcChat(GrpcSubscriber):
    """The bidirectional Chat stream: a subscriber that publishes by writing."""

    @classmethod
    async def open(cls, name: str, channel_: grpc.aio.Channel, user: str, channel: str) -> GrpcChat:
        stub = chat_pb2_grpc.ChatServiceStub(channel_)
        call = stub.Chat(
            metadata=(("authorization", f"Bearer {token(user)}"), (CHANNEL_KEY, channel))
        )
        chat: GrpcChat = await cls._confirmed(cls(name, channel, call))
        return chat
