"""With the Redis broker, history outlives a node: restarts and failovers recover exactly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from kizuna.client import Backoff, Client, ConnectionState, Publication, Subscribed
from tests.client.conftest import SERVER_ARGS, ws_url
from tests.client.support import StateLog, next_event, token
from tests.client.tcp_proxy import TcpProxy
from tests.support.processes import KizunaProcess, RedisProcess

QUICK = Backoff(min_delay=0.1, max_delay=0.5)


def node(redis: RedisProcess, *extra: str) -> KizunaProcess:
    return KizunaProcess(args=[*SERVER_ARGS, "--broker", redis.url, *extra])


@pytest.fixture
def channel() -> str:
    """A channel no other test of the session (sharing one Redis) uses."""
    return f"chat:cluster-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_node(redis_server: RedisProcess) -> Iterator[KizunaProcess]:
    with node(redis_server) as server:
        yield server


async def test_a_restart_on_redis_recovers_exactly(redis_node: KizunaProcess, channel: str) -> None:
    """The client comes back (through a proxy that holds it off) after two publications."""
    log = StateLog()
    async with (
        TcpProxy(redis_node.port) as proxy,
        Client(ws_url(proxy.port), token=token(), backoff=QUICK, on_state=log) as client,
    ):
        sub = await client.subscribe(channel)
        await next_event(sub, Subscribed)
        await client.publish(channel, "before")
        assert (await next_event(sub, Publication)).data == "before"

        proxy.refusing = True
        await asyncio.to_thread(redis_node.stop)
        await log.wait_for(lambda c: c.state is ConnectionState.DISCONNECTED)
        await asyncio.to_thread(redis_node.start)
        for text in ("meanwhile 1", "meanwhile 2"):
            response = await asyncio.to_thread(
                redis_node.api, "publish", channel=channel, data=text
            )
            assert response.status_code == 200
        proxy.refusing = False

        back = await next_event(sub, Subscribed)
        assert back.resubscribed and back.recovered and not back.gap and back.missed == 2
        got = [(await next_event(sub, Publication)).data for _ in range(2)]
        assert got == ["meanwhile 1", "meanwhile 2"]
        await client.publish(channel, "after")
        pub = await next_event(sub, Publication)
        assert (pub.data, pub.offset) == ("after", 4)  # nothing twice, nothing skipped


async def test_failover_to_another_node_recovers_exactly(
    redis_server: RedisProcess, channel: str
) -> None:
    with node(redis_server) as a, node(redis_server) as b:
        log = StateLog()
        async with (
            Client([a.ws_url, b.ws_url], token=token(), backoff=QUICK, on_state=log) as client,
            Client(b.ws_url, token=token("other")) as other,
        ):
            sub = await client.subscribe(channel)
            await next_event(sub, Subscribed)
            await other.publish(channel, "on b, seen through a")
            assert (await next_event(sub, Publication)).data == "on b, seen through a"

            await asyncio.to_thread(a.stop)  # a drains: 3001, reconnect to another node
            for i in range(3):
                await other.publish(channel, i)

            back = await next_event(sub, Subscribed)
            assert back.recovered and not back.gap
            got = [(await next_event(sub, Publication)).data for _ in range(3)]
            assert got == [0, 1, 2]
            urls = [c.url for c in log.of(ConnectionState.CONNECTED)]
            assert urls == [a.ws_url, b.ws_url]
            shutdown = log.of(ConnectionState.DISCONNECTED)[0]
            assert (shutdown.code, shutdown.reconnect) == (3001, True)
