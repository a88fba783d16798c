"""Frames the node's flush writes are reported once per flush, per transport, in sum."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from kizuna.core.client import Client
from kizuna.core.events import NoEvents
from kizuna.core.node import Node
from tests.core.test_node import cmd, make_node, settle


class Written(NoEvents):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def frames_written(self, transport: str, messages: int, frames: int, nbytes: int) -> None:
        self.calls.append((transport, messages, frames, nbytes))


class SyncTransport:
    """Writes at once (the WebSocket's fast path), recording the frames."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[bytes] = []

    def write_nowait(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    async def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    async def close(self, code: int, reason: str) -> None:
        pass


async def client_on(node: Node, transport: Any, channel: str) -> Client:
    client = Client(node, transport)
    await client.handle_frame(cmd(1, "connect", token="u"))
    await client.handle_frame(cmd(2, "subscribe", channel=channel))
    return client


async def test_one_report_per_flush_and_transport_with_the_sums() -> None:
    events = Written()
    node = await make_node(events=events)
    websockets = [SyncTransport("websocket") for _ in range(3)]
    sse = SyncTransport("sse")
    for transport in [*websockets, sse]:
        await client_on(node, transport, "live:a")
    await settle()
    events.calls.clear()
    for t in [*websockets, sse]:
        t.frames.clear()
    await node.publish("live:a", orjson.dumps({"n": 1}))
    await node.publish("live:a", orjson.dumps({"n": 2}))  # same turn: coalesced
    await asyncio.sleep(0)
    await settle()
    by_transport = {call[0]: call[1:] for call in events.calls}
    assert len(events.calls) == 2  # one flush, two transports
    ws_bytes = sum(len(f) for t in websockets for f in t.frames)
    assert by_transport["websocket"] == (6, 3, ws_bytes)
    assert by_transport["sse"] == (2, 1, len(sse.frames[0]))
    await node.publish("live:a", orjson.dumps({"n": 3}))
    await settle()
    assert [call[:3] for call in events.calls[2:]] == [("websocket", 3, 3), ("sse", 1, 1)]
