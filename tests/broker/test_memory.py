"""The broker contract against the embedded memory broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kizuna.broker.memory import MemoryBroker
from kizuna.protocol.messages import StreamPosition
from tests.broker.contract import HISTORY, BrokerContract, BrokerUnderTest, Recorder, pub, unique


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    async def broker(self) -> AsyncIterator[BrokerUnderTest]:
        recorder = Recorder()
        broker = MemoryBroker.from_url("memory://")
        await broker.start(recorder)
        try:
            yield BrokerUnderTest(broker, recorder)
        finally:
            await broker.close()

    async def test_publish_now_stores_and_delivers_before_it_returns(
        self, broker: BrokerUnderTest
    ) -> None:
        """publishes_in_call: the Node answers a client's publish in the call (client.py)."""
        assert broker.broker.publishes_in_call
        channel = unique()
        await broker.broker.subscribe(channel)
        positions = [broker.broker.publish_now(channel, pub(b"%d" % i), HISTORY) for i in range(3)]
        assert [p.offset for p in positions] == [1, 2, 3]
        assert [p.data for p, _ in broker.recorder.on(channel)] == [b"0", b"1", b"2"]
        stored = await broker.broker.history(channel, since=StreamPosition(0, positions[0].epoch))
        assert [p.data for p in stored.publications] == [b"0", b"1", b"2"]

    async def test_publish_nowait_is_done_in_the_call(self, broker: BrokerUnderTest) -> None:
        """The memory broker publishes in the call, so its future is already resolved."""
        channel = unique()
        await broker.broker.subscribe(channel)
        future = broker.broker.publish_nowait(channel, pub(b"[7]"), HISTORY)
        assert future.done()
        assert future.result().offset == 1
        assert [p.data for p, _ in broker.recorder.on(channel)] == [b"[7]"]
