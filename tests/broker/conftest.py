"""Fixtures of the broker tests: Redis brokers started against private redis-servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kizuna.broker.redis import RedisBroker
from tests.broker.contract import Recorder
from tests.support.processes import RedisProcess

FAST: dict[str, Any] = {
    "reconnect_min_delay": 0.05,
    "reconnect_max_delay": 0.2,
    "ping_interval": 0.5,
    "start_timeout": 2.0,
    "socket_timeout": 2.0,
    "connect_timeout": 0.5,
    "health_timeout": 0.5,
}
"""Timings that make outages visible within a fraction of a second."""


class RedisBrokers:
    """Starts Redis brokers for one test, each with the test's own key prefix; closes them all."""

    def __init__(self) -> None:
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.started: list[RedisBroker] = []

    async def start(
        self, url: str, recorder: Recorder | None = None, **options: Any
    ) -> tuple[RedisBroker, Recorder]:
        recorder = recorder if recorder is not None else Recorder()
        broker = RedisBroker.from_url(url, **{"prefix": self.prefix, **FAST, **options})
        self.started.append(broker)
        await broker.start(recorder)
        return broker, recorder

    async def close(self) -> None:
        for broker in self.started:
            await broker.close()


@pytest.fixture
async def brokers() -> AsyncIterator[RedisBrokers]:
    made = RedisBrokers()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def own_redis() -> Any:
    """A redis-server for one test that stops or restarts it; returns a starter."""
    started: list[RedisProcess] = []

    def start(port: int | None = None) -> RedisProcess:
        process = RedisProcess() if port is None else RedisProcess(port=port)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
