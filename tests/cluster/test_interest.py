"""A node subscribes to a channel in Redis only while it has local subscribers to it.

Checked where it matters, in Redis itself (``PUBSUB NUMSUB`` on a private
redis-server, so no other test's subscriptions count), and in the nodes'
metrics: the node without subscribers fans out nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from kizuna.broker.redis_scripts import ChannelKeys
from kizuna.core.revocation import CONTROL_CHANNEL
from tests.cluster.conftest import new_prefix, nodes
from tests.cluster.support import eventually, metric, ws_client
from tests.support.processes import KizunaProcess, RedisProcess

COUNT = 20


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as process:
        yield process


async def test_a_node_without_subscribers_gets_none_of_the_traffic(
    private_redis: RedisProcess, uid: str, http: httpx.AsyncClient
) -> None:
    prefix = new_prefix()
    channel = f"chat:interest-{uid}"
    name = ChannelKeys.of(prefix, channel).pubsub
    control = ChannelKeys.of(prefix, CONTROL_CHANNEL).pubsub
    probe = redis.asyncio.Redis(port=private_redis.port)

    async def numsub() -> int:
        [(_, count)] = await probe.pubsub_numsub(name)
        return int(count)

    async def channels() -> set[str]:
        return {n.decode() if isinstance(n, bytes) else n for n in await probe.pubsub_channels()}

    a: KizunaProcess
    b: KizunaProcess
    try:
        with nodes(private_redis, 2, prefix=prefix) as (a, b):
            assert await channels() == {control}  # only the node-to-node channel
            reader = await ws_client(a, f"reader-{uid}")
            await reader.call("subscribe", channel=channel)
            assert await numsub() == 1  # node A only

            writer = await ws_client(b, f"writer-{uid}")
            for i in range(COUNT):
                await writer.call("publish", channel=channel, data=i)
            pubs: list[int] = []
            while len(pubs) < COUNT:
                pubs.append((await reader.expect_push("pub", channel))["data"])
            assert pubs == list(range(COUNT))

            assert await metric(http, a, "kizuna_channels_active") == 1
            assert await metric(http, a, "kizuna_deliveries_total", namespace="chat") == COUNT
            assert await metric(http, b, "kizuna_channels_active") == 0
            assert await metric(http, b, "kizuna_deliveries_total", namespace="chat") == 0
            fanned = "kizuna_publications_fanned_out_total"
            assert await metric(http, b, fanned, namespace="chat") == 0

            # Interest follows subscribers: B joins and leaves, then A's reader goes.
            await writer.call("subscribe", channel=channel)
            assert await numsub() == 2
            await writer.call("unsubscribe", channel=channel)

            async def back_to_one() -> bool:
                return await numsub() == 1

            await eventually(back_to_one, "node B released the channel")
            await reader.aclose()

            async def only_control() -> bool:
                return await channels() == {control}

            await eventually(only_control, "node A released the channel")
            await writer.aclose()
    finally:
        await probe.aclose()
