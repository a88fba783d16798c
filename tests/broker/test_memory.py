"""The broker contract against the embedded memory broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kizuna.broker.memory import MemoryBroker
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

    async def test_publish_nowait_is_done_in_the_call(self, broker: BrokerUnderTest) -> None:
        """The memory broker publishes in the call, so its future is already resolved."""
        channel = unique()
        await broker.broker.subscribe(channel)
        future = broker.broker.publish_nowait(channel, pub(b"[7]"), HISTORY)
        assert future.done()
        assert future.result().offset == 1
        assert [p.data for p, _ in broker.recorder.on(channel)] == [b"[7]"]
