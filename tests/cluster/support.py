"""What the multi-node tests share: a subscriber that checks its stream, publishers, probes.

:class:`Follower` is the test's own client-side recovery loop (docs/protocol.md
§6 and §10): it keeps a position per channel, checks that every publication
continues it (same epoch, next offset), and on reconnecting subscribes with
``since``. Anything else — a duplicate, a jump, an epoch change nobody
announced — is recorded as a violation, which every test asserts is empty.
What the server *told* it (a 3005 close, ``recovered: false``) is recorded
separately: that is the honest way to lose publications.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.clients import TIMEOUT, PeerClosed, PyClient, token
from tests.support.processes import API_KEY, KizunaProcess

__all__ = [
    "Acked",
    "Follower",
    "api_publish",
    "eventually",
    "metric",
    "ready_status",
    "ws_client",
]

Position = tuple[str, int]
"""(epoch, offset)"""


async def ws_client(node: KizunaProcess, user: str) -> PyClient:
    """A connected native WebSocket client of ``node``."""
    client = await PyClient.open(node.ws_url)
    await client.connect(token(user))
    return client


async def api_publish(
    http: httpx.AsyncClient, node: KizunaProcess, channel: str, data: Any
) -> httpx.Response:
    return await http.post(
        f"{node.url}/api/publish",
        json={"channel": channel, "data": data},
        headers={"Authorization": f"apikey {API_KEY}"},
    )


async def ready_status(http: httpx.AsyncClient, node: KizunaProcess) -> int:
    return (await http.get(f"{node.url}/readyz")).status_code


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0, every: float = 0.05
) -> float:
    """Poll ``check`` until it holds; returns the seconds it took, fails after ``within``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def metric(http: httpx.AsyncClient, node: KizunaProcess, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples on ``node`` whose labels include ``labels`` (0 if none)."""
    text = (await http.get(f"{node.url}/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class Acked:
    """What publishers were told: channel → position → data.

    Epochs are random strings, so "in order" means by epoch in the order they
    were first acknowledged, then by offset.
    """

    def __init__(self) -> None:
        self.by_channel: dict[str, dict[Position, Any]] = {}
        self._epochs: dict[str, int] = {}

    def add(self, channel: str, result: dict[str, Any], data: Any) -> None:
        position = (result["epoch"], result["offset"])
        entries = self.by_channel.setdefault(channel, {})
        assert position not in entries, f"two publications acknowledged at {position}"
        entries[position] = data
        self._epochs.setdefault(position[0], len(self._epochs))

    def count(self, channel: str) -> int:
        return len(self.by_channel.get(channel, {}))

    def in_order(self, channel: str, epoch: str | None = None) -> list[tuple[Position, Any]]:
        """Acknowledged publications of ``channel`` (of one epoch, if given), in order."""
        entries = self.by_channel.get(channel, {})
        return sorted(
            ((pos, data) for pos, data in entries.items() if epoch in (None, pos[0])),
            key=lambda item: (self._epochs[item[0][0]], item[0][1]),
        )

    def epochs(self, channel: str) -> list[str]:
        """The channel's epochs, oldest first."""
        return list(dict.fromkeys(pos[0] for pos, _ in self.in_order(channel)))


class Follower:
    """A subscriber to some channels that checks every publication against its position."""

    def __init__(self, user: str, channels: Sequence[str]) -> None:
        self.user = user
        self.channels = list(channels)
        self.positions: dict[str, Position] = {}
        self.received: dict[str, list[tuple[Position, Any]]] = {c: [] for c in channels}
        self.told: list[tuple[str, str]] = []
        """What the server said about losses: ("close", "3005"), ("recovered false", channel)."""
        self.violations: list[str] = []
        self.recoveries: list[dict[str, Any]] = []
        """Every subscribe-with-since result, as received."""
        self.client: PyClient | None = None

    async def attach(self, node: KizunaProcess) -> None:
        """Connect to ``node`` and subscribe every channel, from its position if known."""
        client = await ws_client(node, self.user)
        self.client = client
        for channel in self.channels:
            params: dict[str, Any] = {"channel": channel}
            known = self.positions.get(channel)
            if known is not None:
                params["since"] = {"epoch": known[0], "offset": known[1]}
            result = await client.call("subscribe", **params)
            self._subscribed(channel, result, asked=known is not None)

    def _subscribed(self, channel: str, result: dict[str, Any], *, asked: bool) -> None:
        epoch = result["epoch"]
        if asked:
            self.recoveries.append(result)
            if result["recovered"]:
                for pub in result["publications"]:
                    self._accept(channel, epoch, pub["offset"], pub["data"])
                if self.positions[channel] != (epoch, result["offset"]):
                    self.violations.append(f"{channel}: recovery ended short of {result}")
            else:
                self.told.append(("recovered false", channel))
        self.positions[channel] = (epoch, result["offset"])

    def _accept(self, channel: str, epoch: str, offset: int, data: Any) -> None:
        last_epoch, last = self.positions[channel]
        if epoch == last_epoch and offset == last + 1:
            self.positions[channel] = (epoch, offset)
            self.received[channel].append(((epoch, offset), data))
        elif epoch == last_epoch and offset <= last:
            self.violations.append(f"{channel}: {offset} again (at {last})")
        else:
            self.violations.append(f"{channel}: ({epoch}, {offset}) after ({last_epoch}, {last})")

    async def read_until(self, done: Callable[[], bool], within: float = TIMEOUT) -> None:
        """Take publications until ``done()``; PeerClosed if the server closes first."""
        client = self.client
        assert client is not None
        try:
            async with asyncio.timeout(within):
                while not done():
                    message = await client.expect(lambda m: m.get("push") == "pub")
                    self._accept(
                        message["channel"], message["epoch"], message["offset"], message["data"]
                    )
        except TimeoutError:
            raise AssertionError(
                f"{self.user}: still waiting after {within}s at {self.positions};"
                f" violations {self.violations}"
            ) from None

    async def read_until_closed(self, within: float = TIMEOUT) -> int:
        """Take publications until the server closes the connection; returns the close code."""
        try:
            await self.read_until(lambda: False, within)
        except PeerClosed as exc:
            self.client = None
            if exc.code == 3005:
                self.told.append(("close", str(exc.code)))
            return exc.code
        raise AssertionError("unreachable: read_until(False) only ends by raising")

    def has(self, channel: str, count: int) -> Callable[[], bool]:
        """A condition for read_until: ``count`` publications taken in ``channel``."""
        return lambda: len(self.received[channel]) >= count

    def has_everywhere(self, count: int) -> Callable[[], bool]:
        """A condition for read_until: ``count`` publications taken in every channel."""
        return lambda: all(len(taken) >= count for taken in self.received.values())

    def reached(self, channel: str, offset: int) -> Callable[[], bool]:
        """A condition for read_until: the position in ``channel`` is at ``offset`` or beyond."""
        return lambda: self.positions[channel][1] >= offset

    def last(self, channel: str) -> Position:
        return self.positions[channel]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
