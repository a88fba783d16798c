"""The broker contract against the embedded memory broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kizuna.broker.memory import MemoryBroker
from tests.broker.contract import BrokerContract, BrokerUnderTest, Recorder


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
