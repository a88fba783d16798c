"""Fixtures of the broker tests: Redis brokers started against private redis-servers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from kizuna.broker.redis import RedisBroker
from tests.broker.contract import Recorder
from tests.support.processes import RedisProcess, free_port

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


def pubsub_transport(broker: RedisBroker) -> asyncio.BaseTransport:
    """The transport under a standalone broker's one Pub/Sub connection (connected)."""
    [subscriber] = broker._subscribers.values()
    assert subscriber._conn is not None, "the Pub/Sub connection is not up"
    writer = subscriber._conn._writer
    assert writer is not None
    return writer.transport


@pytest.fixture
async def brokers() -> AsyncIterator[RedisBrokers]:
    made = RedisBrokers()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def own_redis() -> Iterator[Callable[..., RedisProcess]]:
    """A redis-server for one test that stops or restarts it; returns a starter."""
    started: list[RedisProcess] = []

    def start(port: int | None = None) -> RedisProcess:
        process = RedisProcess() if port is None else RedisProcess(port=port)
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


class RedisClusterProcesses:
    """A real Redis Cluster of ``size`` primaries (no replicas), each a private redis-server.

    Slots are split evenly with CLUSTER ADDSLOTSRANGE and the nodes introduced
    with CLUSTER MEET; the fixture returns once every node reports
    ``cluster_state:ok``.
    """

    def __init__(self, size: int = 3, *args: str) -> None:
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *args)
        # The cluster bus defaults to port + 10000, which may not exist or be free.
        self.bus_ports = [free_port() for _ in range(size)]
        self.nodes = [RedisProcess(args=[*args, "--cluster-port", str(p)]) for p in self.bus_ports]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def client(self, node: RedisProcess) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port)

    def start(self) -> RedisClusterProcesses:
        for node in self.nodes:
            node.start()
        step = 16384 // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = 16383 if i == len(self.nodes) - 1 else (i + 1) * step - 1
            with self.client(node) as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
        with self.client(self.nodes[0]) as first:
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        deadline = time.monotonic() + 15
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("redis cluster did not converge")
            time.sleep(0.05)
        return self

    def empty_slot_channel(self, on: RedisProcess) -> tuple[str, int]:
        """A fresh channel name whose slot is owned by ``on`` and holds no keys yet."""
        with self.client(on) as c:
            while True:
                channel = f"chat:{uuid.uuid4().hex[:12]}"
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", channel))
                if self.owner(slot) is on and not c.execute_command(
                    "CLUSTER", "COUNTKEYSINSLOT", slot
                ):
                    return channel, slot

    def _ok(self, node: RedisProcess) -> bool:
        with self.client(node) as c:
            info = c.execute_command("CLUSTER", "INFO").decode()
            return "cluster_state:ok" in info and f"cluster_known_nodes:{len(self.nodes)}" in info

    def node_id(self, node: RedisProcess) -> str:
        with self.client(node) as c:
            return str(c.execute_command("CLUSTER", "MYID").decode())

    def owner(self, slot: int, ask: RedisProcess | None = None) -> RedisProcess:
        with self.client(ask or self.nodes[0]) as c:
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == primary[1])
        raise LookupError(slot)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A three-primary Redis Cluster for the whole session."""
    cluster = RedisClusterProcesses()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
