"""Every kizuna edge that can publish, as a publisher into one channel.

A publisher's ``burst`` publishes several messages in order, as fast as its
edge allows (pipelined WebSocket commands, Socket.IO emits sent before their
acks are read, Chat stream writes before their echoes), and returns each
one's position from the edge's own acknowledgement (:class:`Sent`), which the
interop test then holds every subscriber to.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.e2e.clients import WireClient, token
from tests.interop.subscribers import TIMEOUT, GrpcChat, chat_payload
from tests.socketio.clients import SioSocket
from tests.support.processes import API_KEY

__all__ = [
    "ApiPublisher",
    "GrpcChatPublisher",
    "GrpcUnaryPublisher",
    "HttpPublisher",
    "NativePublisher",
    "Publisher",
    "Sent",
    "SocketIOPublisher",
]


@dataclass
class Sent:
    """One publication as its publisher's edge acknowledged it."""

    publisher: str
    data: dict[str, Any]
    """The payload subscribers must see; ``timestamp`` None when the server picks it."""
    offset: int
    epoch: str
    sender: str | None
    """The ``info.user`` native subscribers must see (None: published by the server API)."""
    window: tuple[int, int] | None = None
    """For a server-chosen timestamp: the milliseconds it must fall within."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Publisher(abc.ABC):
    """One edge that publishes into ``channel`` as ``user`` (the server API has no user)."""

    name: str
    channel: str
    user: str
    stamps: list[int] = field(default_factory=list)
    """Timestamps this publisher chose, for payloads where the client sets one."""

    def stamp(self) -> int:
        value = 1_700_000_000_000 + len(self.stamps) * 1000 + sum(map(ord, self.name))
        self.stamps.append(value)
        return value

    @abc.abstractmethod
    async def burst(self, contents: list[str]) -> list[Sent]:
        """Publish ``contents`` in this order; each Sent as its edge acknowledged it."""


@dataclass
class NativePublisher(Publisher):
    """``publish`` commands on a native WebSocket connection, pipelined in one go."""

    client: WireClient | None = None

    async def burst(self, contents: list[str]) -> list[Sent]:
        assert self.client is not None
        datas = [chat_payload(self.user, c, self.stamp()) for c in contents]
        ids = []
        for data in datas:
            cid = self.client.next_id()
            ids.append(cid)
            await self.client.send(
                {"id": cid, "method": "publish", "params": {"channel": self.channel, "data": data}}
            )
        sent = []
        for cid, data in zip(ids, datas, strict=True):
            reply = await self.client.reply_to(cid, TIMEOUT)
            assert "result" in reply, reply
            result = reply["result"]
            sent.append(Sent(self.name, data, result["offset"], result["epoch"], self.user))
        return sent


@dataclass
class HttpPublisher(Publisher):
    """``POST /connection/publish`` with the user's token (how SSE/long-poll clients publish)."""

    http: httpx.AsyncClient | None = None
    base_url: str = ""
    path = "/connection/publish"

    def auth(self) -> tuple[str, str | None]:
        """The Authorization header, and the user the publication is attributed to."""
        return f"Bearer {token(self.user)}", self.user

    async def burst(self, contents: list[str]) -> list[Sent]:
        assert self.http is not None
        header, attributed = self.auth()
        sent = []
        for content in contents:
            data = chat_payload(self.user, content, self.stamp())
            response = await self.http.post(
                f"{self.base_url}{self.path}",
                json={"channel": self.channel, "data": data},
                headers={"Authorization": header},
            )
            assert response.status_code == 200, response.text
            result = response.json()["result"]
            sent.append(Sent(self.name, data, result["offset"], result["epoch"], attributed))
        return sent


@dataclass
class ApiPublisher(HttpPublisher):
    """The server HTTP API, ``POST /api/publish`` with the API key (a backend: no user)."""

    path = "/api/publish"

    def auth(self) -> tuple[str, str | None]:
        return f"apikey {API_KEY}", None


@dataclass
class SocketIOPublisher(Publisher):
    """Socket.IO ``message({roomId, content})``, every emit sent before the first ack is read.

    The server stamps the payload itself (``Date.now()`` in the guide), so the
    expected timestamp is a window, not a value.
    """

    sock: SioSocket | None = None

    async def burst(self, contents: list[str]) -> list[Sent]:
        sock = self.sock
        assert sock is not None
        driver, room = sock.driver, self.channel.partition(":")[2]
        before = now_ms()
        ids = []
        for content in contents:
            cid = next(driver._ids)
            ids.append(cid)
            args = [{"roomId": room, "content": content}]
            await driver.command(
                op="emit", sock=sock.name, id=cid, event="message", args=args, ack=True
            )
        sent = []
        for cid, content in zip(ids, contents, strict=True):
            reply = await driver.expect(
                lambda e, cid=cid: (
                    e["sock"] == sock.name and e["event"] == "ack" and e["id"] == cid
                ),
                TIMEOUT,
            )
            [ack] = reply["args"]
            assert ack["ok"] is True and ack["room"] == room, ack
            data = {"userId": self.user, "content": content, "timestamp": None}
            sent.append(
                Sent(self.name, data, ack["offset"], ack["epoch"], self.user, (before, now_ms()))
            )
        return sent


@dataclass
class GrpcUnaryPublisher(Publisher):
    """ChatService.SendMessage, one unary call per message."""

    stub: chat_pb2_grpc.ChatServiceStub | None = None

    async def burst(self, contents: list[str]) -> list[Sent]:
        assert self.stub is not None
        sent = []
        for content in contents:
            stamp = self.stamp()
            request = chat_pb2.ChatMessage(channel=self.channel, content=content, timestamp=stamp)
            response = await self.stub.SendMessage(
                request,
                metadata=(("authorization", f"Bearer {token(self.user)}"),),
                timeout=TIMEOUT,
            )
            assert (response.channel, response.timestamp) == (self.channel, stamp), response
            data = chat_payload(self.user, content, stamp)
            sent.append(Sent(self.name, data, response.offset, response.epoch, self.user))
        return sent


@dataclass
class GrpcChatPublisher(Publisher):
    """Writes on a Chat stream; the acknowledgement is each message's echo on that stream."""

    chat: GrpcChat | None = None

    async def burst(self, contents: list[str]) -> list[Sent]:
        chat = self.chat
        assert chat is not None
        datas = []
        for content in contents:
            stamp = self.stamp()
            await chat.call.write(chat_pb2.ChatMessage(content=content, timestamp=stamp))
            datas.append(chat_payload(self.user, content, stamp))
        sent = []
        for data in datas:
            await chat.until(lambda d, c=data["content"]: d.data["content"] == c)
            [echo] = [d for d in chat.received if d.data["content"] == data["content"]]
            assert echo.epoch is not None
            sent.append(Sent(self.name, data, echo.offset, echo.epoch, self.user))
        return sent
