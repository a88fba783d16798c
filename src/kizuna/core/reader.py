"""Stateless readers: read what follows a cursor, or wait until something does.

Long-polling keeps no connection state on the server: each request carries a
cursor (channel → position), and the answer is read from channel history. That
is what lets a client send each poll to any node. The hub is used only to wake
a waiting request; what it returns always comes from history, so order and
exactness come from offsets, not from timing.

A channel whose history no longer reaches back to the cursor (or whose epoch
changed) is reported as a *gap*, and its position restarts at the current top:
the reader is told, never silently skipped ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from kizuna.core.node import Node, continues
from kizuna.protocol.messages import Publication, StreamPosition

__all__ = ["ReadResult", "listen", "read_since"]


@dataclass(slots=True)
class ReadResult:
    publications: list[tuple[str, Publication]] = field(default_factory=list)
    positions: dict[str, StreamPosition] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    """Channels the reader missed publications in; their positions restart at the top."""


async def read_since(
    node: Node, channels: list[str], cursor: dict[str, StreamPosition], limit: int
) -> ReadResult:
    """Publications after ``cursor`` in each channel (at most ``limit`` per channel).

    A channel missing from the cursor starts at its current top (nothing is
    returned for it), so a first request learns where to start.
    """
    result = ReadResult()
    for channel in channels:
        since = cursor.get(channel)
        if since is None:
            current = await node.broker.history(channel, limit=0)
            result.positions[channel] = current.position
            continue
        history = await node.broker.history(channel, since=since, limit=limit)
        # Fewer than ``limit`` is the normal case; exactly ``limit`` means more may follow,
        # which the next request reads from the advanced position.
        if not continues(since, history, limit):
            result.gaps.append(channel)
            result.positions[channel] = history.position
            continue
        pubs = history.publications
        result.publications.extend((channel, p) for p in pubs)
        last = pubs[-1].offset if pubs else since.offset
        result.positions[channel] = StreamPosition(last, history.position.epoch)
    return result


class _Waiter:
    """A hub subscriber that only notes that something arrived."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def enqueue(self, data: bytes) -> None:
        self.event.set()

    def enqueue_droppable(self, data: memoryview) -> None:
        self.event.set()


@contextlib.asynccontextmanager
async def listen(node: Node, channels: list[str]) -> AsyncIterator[asyncio.Event]:
    """Within the block, the event is set when anything is published in ``channels``.

    Registering before reading history closes the race where a publication
    lands between the read and the wait.
    """
    waiter = _Waiter()
    for channel in channels:
        node.hub.add_pending(channel, waiter)
        node.hub.activate(channel, waiter)
    try:
        for channel in channels:
            await node.ensure_broker_subscription(channel)
        yield waiter.event
    finally:
        for channel in channels:
            if node.hub.remove(channel, waiter):
                node.spawn(node.release_broker_subscription(channel))
