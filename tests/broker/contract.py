"""The broker contract: one suite every Broker and PresenceStore must pass, unchanged.

It checks the promises written in ``kizuna.core.ports`` (Broker, PresenceStore,
BrokerEventHandler). A backend's test module subclasses :class:`BrokerContract`
and provides one fixture, ``broker``, yielding a :class:`BrokerUnderTest`: a
started broker (which is also the presence store) and the :class:`Recorder`
it reports to. Channels are unique per test (:func:`unique`), so backends that
share a server across tests (Redis) need no cleanup between them.

Absence ("nothing arrived for that channel") is proven with a barrier rather
than a sleep: after the publication that must *not* arrive, publish a marker to
a subscribed channel and wait for it. One publisher's awaited publishes reach
one node in the order they were made, so once the marker is in, anything that
was going to arrive before it has.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from kizuna.core.ports import PublishOptions
from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = ["TIMEOUT", "BrokerContract", "BrokerUnderTest", "Recorder", "unique"]

TIMEOUT = 5.0
"""Seconds any single expectation may take before the test fails."""

HISTORY = PublishOptions(history_size=100, history_ttl=60.0)
NO_HISTORY = PublishOptions()


def unique(prefix: str = "chat") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


def pub(data: bytes = b'{"n":1}', **kwargs: Any) -> Publication:
    return Publication(data, **kwargs)


@dataclass
class Recorder:
    """A BrokerEventHandler that records every call, and lets a test await what it expects."""

    publications: list[tuple[str, Publication, str]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        self.publications.append((channel, pub, epoch))
        self._changed.set()

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))
        self._changed.set()

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self._changed.set()

    def handle_gap(self, channel: str) -> None:
        """Optional hook (not in the Protocol yet): the broker could not close a gap."""
        self.gaps.append(channel)
        self._changed.set()

    def on(self, channel: str) -> list[tuple[Publication, str]]:
        """Publications delivered for ``channel``, in delivery order, with their epochs."""
        return [(p, e) for c, p, e in self.publications if c == channel]

    async def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``condition()`` holds; fail the test after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def count(self, channel: str, n: int, timeout: float = TIMEOUT) -> None:
        await self.until(lambda: len(self.on(channel)) >= n, timeout)


@dataclass
class BrokerUnderTest:
    broker: Any
    recorder: Recorder

    async def barrier(self) -> None:
        """Publish a marker on a fresh subscribed channel and wait until it is delivered."""
        marker = unique("barrier")
        await self.broker.subscribe(marker)
        await self.broker.publish(marker, pub(b'"marker"'), NO_HISTORY)
        await self.recorder.count(marker, 1)
        await self.broker.unsubscribe(marker)


class BrokerContract:
    """The promises of kizuna.core.ports, as tests. Subclass and provide ``broker``."""

    # --- offsets and delivery (Broker contract 1 and 2) ----------------------------------

    async def test_offsets_are_consecutive_from_one_within_an_epoch(
        self, broker: BrokerUnderTest
    ) -> None:
        a, b = unique(), unique()
        positions = [await broker.broker.publish(a, pub(), HISTORY) for _ in range(5)]
        other = await broker.broker.publish(b, pub(), HISTORY)
        assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
        assert len({p.epoch for p in positions}) == 1
        assert positions[0].epoch != ""
        assert other.offset == 1  # offsets are per channel

    async def test_publish_returns_the_position_subscribers_see(
        self, broker: BrokerUnderTest
    ) -> None:
        channel = unique()
        await broker.broker.subscribe(channel)
        position = await broker.broker.publish(channel, pub(b'{"hello":"world"}'), HISTORY)
        await broker.recorder.count(channel, 1)
        [(seen, epoch)] = broker.recorder.on(channel)
        assert (seen.offset, epoch) == (position.offset, position.epoch)
        assert seen.data == b'{"hello":"world"}'

    async def test_publish_without_history_has_no_offset(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        await broker.broker.subscribe(channel)
        position = await broker.broker.publish(channel, pub(b"[1]"), NO_HISTORY)
        assert position == StreamPosition(0, "")
        await broker.recorder.count(channel, 1)
        [(seen, epoch)] = broker.recorder.on(channel)
        assert (seen.offset, epoch, seen.data) == (0, "", b"[1]")
        history = await broker.broker.history(channel)
        assert history.publications == []
        assert history.position.offset == 0

    async def test_delivery_only_while_subscribed_and_only_for_subscribed_channels(
        self, broker: BrokerUnderTest
    ) -> None:
        channel, other = unique(), unique()
        await broker.broker.publish(channel, pub(b'"before"'), HISTORY)
        await broker.broker.subscribe(channel)
        await broker.broker.publish(channel, pub(b'"during"'), HISTORY)
        await broker.broker.publish(other, pub(b'"elsewhere"'), HISTORY)
        await broker.recorder.count(channel, 1)
        await broker.broker.unsubscribe(channel)
        await broker.broker.publish(channel, pub(b'"after"'), HISTORY)
        await broker.barrier()
        assert [p.data for p, _ in broker.recorder.on(channel)] == [b'"during"']
        assert broker.recorder.on(other) == []

    async def test_order_is_kept_under_concurrent_publishes(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        await broker.broker.subscribe(channel)
        n = 200
        positions = await asyncio.gather(
            *(broker.broker.publish(channel, pub(b"%d" % i), HISTORY) for i in range(n))
        )
        assert sorted(p.offset for p in positions) == list(range(1, n + 1))
        await broker.recorder.count(channel, n)
        delivered = broker.recorder.on(channel)
        assert [p.offset for p, _ in delivered] == list(range(1, n + 1))  # in order, once each
        by_offset = {p.offset: int(p.data) for p, _ in delivered}
        assert by_offset == {pos.offset: i for i, pos in enumerate(positions)}

    async def test_publish_nowait_takes_its_place_in_the_call(
        self, broker: BrokerUnderTest
    ) -> None:
        """Where a broker pipelines publishes, publish_nowait is publish started in the call:
        futures made in order are applied in that order, with publish's positions."""
        if not broker.broker.pipelines_publishes:
            pytest.skip("the Node calls publish_nowait only on brokers that pipeline publishes")
        channel = unique()
        await broker.broker.subscribe(channel)
        futures = [
            broker.broker.publish_nowait(channel, pub(b"%d" % i), HISTORY) for i in range(20)
        ]
        futures.append(broker.broker.publish_nowait(channel, pub(b"20"), NO_HISTORY))
        positions = await asyncio.gather(*futures)
        assert [p.offset for p in positions] == [*range(1, 21), 0]
        assert positions[-1] == StreamPosition(0, "")
        await broker.recorder.count(channel, 21)
        assert [int(p.data) for p, _ in broker.recorder.on(channel)] == list(range(21))

    # --- history (Broker contract 3) -----------------------------------------------------

    async def test_history_limit_since_and_reverse(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        for i in range(1, 11):
            top = await broker.broker.publish(channel, pub(b"%d" % i), HISTORY)
        epoch = top.epoch

        async def offsets(**kwargs: Any) -> list[int]:
            result = await broker.broker.history(channel, **kwargs)
            assert result.position == StreamPosition(10, epoch)
            assert [int(p.data) for p in result.publications] == [
                p.offset for p in result.publications
            ]
            return [p.offset for p in result.publications]

        assert await offsets() == list(range(1, 11))
        assert await offsets(limit=3) == [1, 2, 3]
        assert await offsets(limit=3, reverse=True) == [10, 9, 8]
        assert await offsets(reverse=True) == list(range(10, 0, -1))
        assert await offsets(limit=0) == []
        since = StreamPosition(4, epoch)
        assert await offsets(since=since) == [5, 6, 7, 8, 9, 10]
        assert await offsets(since=since, limit=2) == [5, 6]
        assert await offsets(since=since, limit=2, reverse=True) == [10, 9]
        assert await offsets(since=StreamPosition(10, epoch)) == []
        assert await offsets(since=StreamPosition(4, epoch + "x")) == []  # another life

    async def test_history_keeps_only_history_size(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        options = PublishOptions(history_size=5, history_ttl=60.0)
        for i in range(1, 13):
            top = await broker.broker.publish(channel, pub(b"%d" % i), options)
        result = await broker.broker.history(channel)
        assert [p.offset for p in result.publications] == [8, 9, 10, 11, 12]
        assert result.position == top
        # A position older than what is kept: the first offset shows the gap.
        old = await broker.broker.history(channel, since=StreamPosition(2, top.epoch))
        assert [p.offset for p in old.publications] == [8, 9, 10, 11, 12]

    async def test_history_of_a_new_channel_has_a_stable_position(
        self, broker: BrokerUnderTest
    ) -> None:
        channel = unique()
        first = await broker.broker.history(channel, limit=0)
        second = await broker.broker.history(channel)
        assert first.position.offset == 0
        assert first.position.epoch != ""
        assert second.position == first.position
        assert second.publications == []
        published = await broker.broker.publish(channel, pub(), HISTORY)
        # A subscriber that read the position first and the publication next sees no gap.
        assert published == StreamPosition(1, first.position.epoch)

    async def test_expired_history_starts_a_new_epoch(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        options = PublishOptions(history_size=10, history_ttl=0.3)
        await broker.broker.publish(channel, pub(), options)
        old = await broker.broker.publish(channel, pub(), options)
        assert old.offset == 2
        await asyncio.sleep(0.5)
        result = await broker.broker.history(channel, since=StreamPosition(1, old.epoch))
        assert result.publications == []
        assert result.position.offset == 0
        assert result.position.epoch != old.epoch
        fresh = await broker.broker.publish(channel, pub(), options)
        assert fresh == StreamPosition(1, result.position.epoch)

    async def test_history_ttl_is_extended_by_each_publication(
        self, broker: BrokerUnderTest
    ) -> None:
        channel = unique()
        options = PublishOptions(history_size=10, history_ttl=0.6)
        first = await broker.broker.publish(channel, pub(), options)
        for _ in range(3):
            await asyncio.sleep(0.25)
            latest = await broker.broker.publish(channel, pub(), options)
        assert latest == StreamPosition(4, first.epoch)  # 0.75 s after the first: same life
        result = await broker.broker.history(channel)
        assert [p.offset for p in result.publications] == [1, 2, 3, 4]

    async def test_remove_history(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        for _ in range(3):
            old = await broker.broker.publish(channel, pub(), HISTORY)
        await broker.broker.remove_history(channel)
        result = await broker.broker.history(channel)
        assert result.publications == []
        assert result.position.offset == 0
        assert result.position.epoch != old.epoch
        assert (await broker.broker.publish(channel, pub(), HISTORY)).offset == 1

    async def test_idempotency_key_returns_the_original_position(
        self, broker: BrokerUnderTest
    ) -> None:
        channel = unique()
        await broker.broker.subscribe(channel)
        keyed = PublishOptions(history_size=10, history_ttl=60.0, idempotency_key="order-17")
        first = await broker.broker.publish(channel, pub(b'"a"'), keyed)
        again = await broker.broker.publish(channel, pub(b'"a"'), keyed)
        other = await broker.broker.publish(
            channel, pub(b'"b"'), PublishOptions(10, 60.0, "order-18")
        )
        assert again == first
        assert other == StreamPosition(first.offset + 1, first.epoch)
        await broker.barrier()
        assert [p.data for p, _ in broker.recorder.on(channel)] == [b'"a"', b'"b"']
        history = await broker.broker.history(channel)
        assert [p.offset for p in history.publications] == [1, 2]

    async def test_idempotency_key_does_not_survive_a_new_epoch(
        self, broker: BrokerUnderTest
    ) -> None:
        channel = unique()
        keyed = PublishOptions(history_size=10, history_ttl=60.0, idempotency_key="k")
        await broker.broker.publish(channel, pub(), HISTORY)
        await broker.broker.publish(channel, pub(), keyed)
        await broker.broker.remove_history(channel)
        again = await broker.broker.publish(channel, pub(), keyed)
        # The original position no longer exists: the publication is stored anew.
        assert again.offset == 1
        assert (await broker.broker.history(channel)).position == again

    # --- what travels with a publication -------------------------------------------------

    async def test_publication_fields_round_trip(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        await broker.broker.subscribe(channel)
        data = '{\n  "text": "改行\\nと\\"引用\\"",\n  "n": [1, 2]\n}\n'.encode()
        sent = Publication(
            data,
            info=ClientInfo("user-1", "client-1"),
            published_at=time.time(),
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        bare = Publication(b"null")
        await broker.broker.publish(channel, sent, HISTORY)
        await broker.broker.publish(channel, bare, HISTORY)
        await broker.broker.publish(channel, sent, NO_HISTORY)
        await broker.recorder.count(channel, 3)
        stored = (await broker.broker.history(channel)).publications
        delivered = [p for p, _ in broker.recorder.on(channel)]
        for got, want, offset in [
            (delivered[0], sent, 1),
            (delivered[1], bare, 2),
            (delivered[2], sent, 0),
            (stored[0], sent, 1),
            (stored[1], bare, 2),
        ]:
            assert got.data == want.data
            assert got.info == want.info
            assert got.published_at == want.published_at
            assert got.traceparent == want.traceparent
            assert got.offset == offset

    async def test_join_and_leave_reach_subscribers_only(self, broker: BrokerUnderTest) -> None:
        channel, other = unique(), unique()
        await broker.broker.subscribe(channel)
        alice, bob = ClientInfo("alice", "c-1"), ClientInfo("bob", "c-2")
        await broker.broker.publish_join(channel, alice)
        await broker.broker.publish_join(other, bob)
        await broker.broker.publish_leave(channel, alice)
        await broker.recorder.until(lambda: len(broker.recorder.leaves) >= 1)
        await broker.barrier()
        assert broker.recorder.joins == [(channel, alice)]
        assert broker.recorder.leaves == [(channel, alice)]

    # --- presence ------------------------------------------------------------------------

    async def test_presence_add_remove_and_stats(self, broker: BrokerUnderTest) -> None:
        channel = unique()
        store = broker.broker
        assert await store.presence(channel) == {}
        assert await store.presence_stats(channel) == (0, 0)
        entries = [ClientInfo("alice", "c-1"), ClientInfo("alice", "c-2"), ClientInfo("bob", "c-3")]
        for info in entries:
            await store.add_presence(channel, info, 60.0)
        await store.add_presence(channel, entries[0], 60.0)  # again: still one entry
        assert await store.presence(channel) == {i.client: i for i in entries}
        assert await store.presence_stats(channel) == (3, 2)  # users counted once
        await store.remove_presence(channel, "c-3")
        await store.remove_presence(channel, "c-unknown")
        assert await store.presence(channel) == {i.client: i for i in entries[:2]}
        assert await store.presence_stats(channel) == (2, 1)
        assert await store.presence(unique()) == {}

    # --- health --------------------------------------------------------------------------

    async def test_a_started_broker_is_healthy(self, broker: BrokerUnderTest) -> None:
        assert await broker.broker.healthy() is True
