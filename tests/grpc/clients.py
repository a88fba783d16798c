"""Small clients for the gRPC suite: a native-protocol WebSocket client and call helpers.

:class:`NativeClient` speaks kizuna's native protocol over the Python
``websockets`` client (newline-delimited JSON commands; see
``kizuna.protocol.codec``), so interop is checked against the real WebSocket
edge, not against anything in this package.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import grpc
from websockets.asyncio.client import ClientConnection, connect

from kizuna.transports.grpc import DISCONNECT_CODE_KEY, ERROR_CODE_KEY, SUBSCRIPTION_KEY

TIMEOUT = 5.0
"""Seconds any single expectation may take before the test fails."""

Message = dict[str, Any]


class NativeClient:
    """A native-protocol client over WebSocket: commands await their reply; pushes queue up."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pushes: list[Message] = []
        self._next_id = 0

    @classmethod
    async def open(cls, ws_url: str, token: str) -> NativeClient:
        ws = await connect(ws_url, compression=None, proxy=None, open_timeout=TIMEOUT)
        client = cls(ws)
        await client.call("connect", token=token)
        return client

    async def request(self, method: str, **params: Any) -> Message:
        self._next_id += 1
        cid = self._next_id
        await self.ws.send(json.dumps({"id": cid, "method": method, "params": params}))
        reply: Message | None = None
        async with asyncio.timeout(TIMEOUT):
            while reply is None:
                frame = await self.ws.recv()
                for line in str(frame).split("\n"):
                    message = json.loads(line)
                    if message.get("id") == cid:
                        reply = message
                    else:
                        self.pushes.append(message)
        return reply

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        reply = await self.request(method, **params)
        assert "error" not in reply, f"{method} failed: {reply}"
        result: dict[str, Any] = reply["result"]
        return result

    async def publications(self, channel: str) -> list[Message]:
        """Every ``pub`` push on ``channel`` received before a ping round trip, in order.

        The server queues replies and pushes for a connection in one queue, so every
        publication queued for us before the ping arrives before its reply.
        """
        await self.call("ping")
        pubs = [m for m in self.pushes if m.get("push") == "pub" and m["channel"] == channel]
        self.pushes = [m for m in self.pushes if m not in pubs]
        return pubs

    async def aclose(self) -> None:
        await self.ws.close()


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await a call that must fail; returns its error."""
    try:
        async with asyncio.timeout(TIMEOUT):
            result = await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"the call succeeded: {result!r}")


def trailing(error: grpc.aio.AioRpcError, key: str) -> str | None:
    for k, v in error.trailing_metadata() or ():
        if k == key:
            return str(v)
    return None


def error_code(error: grpc.aio.AioRpcError) -> int | None:
    """The kizuna error code (1xx) in a failed call's trailing metadata."""
    value = trailing(error, ERROR_CODE_KEY)
    return int(value) if value is not None else None


def disconnect_code(error: grpc.aio.AioRpcError) -> int | None:
    """The kizuna disconnect code (3xxx/4xxx) with which the server ended a stream."""
    value = trailing(error, DISCONNECT_CODE_KEY)
    return int(value) if value is not None else None


async def subscriptions(call: Any) -> dict[str, dict[str, Any]]:
    """A stream's initial metadata: channel → {offset, epoch, recovered}."""
    async with asyncio.timeout(TIMEOUT):
        metadata = await call.initial_metadata()
    out = {}
    for key, value in metadata or ():
        if key == SUBSCRIPTION_KEY:
            entry = json.loads(value)
            out[entry["channel"]] = entry
    return out


async def read(call: Any, n: int = 1) -> list[Any]:
    """The next ``n`` messages of a stream (fails on EOF or after TIMEOUT)."""
    out = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(n):
            message = await call.read()
            assert message is not grpc.aio.EOF, f"stream ended after {len(out)} of {n}"
            out.append(message)
    return out
