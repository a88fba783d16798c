"""Two nodes on a real three-primary Redis Cluster (``redis+cluster://``, sharded Pub/Sub).

Channels land on different primaries (each channel's keys share a hash
tag); each node holds one sharded Pub/Sub connection per primary it needs.
Publications must still cross nodes exactly once and in order, history must
recover across nodes, and a node must hold a shard channel only while it
has a subscriber there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from kizuna.broker.redis_scripts import ChannelKeys
from tests.broker.conftest import RedisClusterProcesses
from tests.cluster.conftest import FAST_BROKER, new_prefix
from tests.cluster.support import Acked, Follower, eventually, ws_client
from tests.support.processes import KizunaProcess, RedisProcess

PER_CHANNEL = 10


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses()
    try:
        yield processes.start()
    finally:
        processes.stop()


async def test_nodes_on_a_redis_cluster(cluster: RedisClusterProcesses, uid: str) -> None:
    prefix = new_prefix()
    # One channel per primary: its keys and Pub/Sub name carry the channel as hash tag.
    owners = {cluster.empty_slot_channel(on)[0]: on for on in cluster.nodes}
    channels = list(owners)
    url = f"{cluster.url}?prefix={prefix}&{FAST_BROKER}"
    a, b = (KizunaProcess(args=["--broker", url]) for _ in range(2))
    with a, b:
        follower = Follower(f"reader-{uid}", channels)
        await follower.attach(a)
        writer = await ws_client(b, f"writer-{uid}")
        acked = Acked()
        for i in range(PER_CHANNEL):
            for channel in channels:
                result = await writer.call("publish", channel=channel, data=i)
                acked.add(channel, result, i)
        await follower.read_until(follower.has_everywhere(PER_CHANNEL))
        for channel in channels:
            assert follower.received[channel] == acked.in_order(channel)

        def shard_subscribers() -> list[int]:
            return [_shardnumsub(owners[c], ChannelKeys.of(prefix, c).pubsub) for c in channels]

        # Each channel is held, sharded, by one node only, on the primary owning its slot.
        assert shard_subscribers() == [1] * len(channels)

        # A reader that left comes back on the other node and recovers exactly.
        positions = dict(follower.positions)
        await follower.close()
        for channel in channels:
            result = await writer.call("publish", channel=channel, data="missed")
            acked.add(channel, result, "missed")
        await follower.attach(b)
        assert [r["recovered"] for r in follower.recoveries] == [True] * len(channels)
        for channel in channels:
            assert follower.received[channel] == acked.in_order(channel)
            assert follower.positions[channel][1] == positions[channel][1] + 1
        assert follower.violations == []

        # Node A has no subscriber left: it lets go of the shard channels.
        async def released() -> bool:
            return shard_subscribers() == [1] * len(channels)  # node B's reader only

        await eventually(released, "node A released its shard channels")
        await follower.close()
        await writer.aclose()


def _shardnumsub(node: RedisProcess, name: str) -> int:
    with redis.Redis(port=node.port) as client:
        reply = client.execute_command("PUBSUB", "SHARDNUMSUB", name)
    return int(reply[1])
