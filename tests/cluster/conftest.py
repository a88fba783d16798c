"""Fixtures of the multi-node tests: several real ``kizuna serve`` processes on one real Redis.

Nodes are started in parallel (each start waits for ``/healthz``), with broker
timings short enough that an outage shows within a second. Each group of
nodes gets its own key prefix, so groups sharing the session's Redis never
see each other's channels, presence or history.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.processes import KizunaProcess, RedisProcess

FAST_BROKER = (
    "reconnect_min_delay=0.05&reconnect_max_delay=0.5&ping_interval=0.5"
    "&health_timeout=0.5&connect_timeout=0.5&socket_timeout=2&start_timeout=2"
)
"""Broker URL options (redis_client.RedisOptions) that make a Redis outage visible quickly."""


def broker_url(redis: RedisProcess, prefix: str) -> str:
    return f"{redis.url}?prefix={prefix}&{FAST_BROKER}"


def new_prefix() -> str:
    return "c" + uuid.uuid4().hex[:10]


@contextlib.contextmanager
def nodes(
    redis: RedisProcess, count: int, *args: str, prefix: str | None = None
) -> Iterator[list[KizunaProcess]]:
    """``count`` nodes on ``redis`` sharing one key prefix, started together, stopped after.

    A node the test already killed is left as it is (stop() on it is a no-op).
    """
    url = broker_url(redis, prefix or new_prefix())
    started = [KizunaProcess(args=["--broker", url, *args]) for _ in range(count)]
    try:
        with ThreadPoolExecutor(count) as pool:
            for future in [pool.submit(node.start) for node in started]:
                future.result()
        yield started
    finally:
        for node in started:
            node.stop()


@pytest.fixture(scope="package")
def three(redis_server: RedisProcess) -> Iterator[list[KizunaProcess]]:
    """Three nodes on the session's Redis, shared by the tests that stop nothing."""
    with nodes(redis_server, 3) as started:
        yield started
