"""A node killed with SIGKILL: its clients recover elsewhere, and its presence expires.

SIGKILL gives the node no chance to say goodbye: no close frame (the client
sees 1006), no leave, no presence removal. What saves the clients is Redis:
the history (Streams) they recover from on another node, and the TTL on the
presence entries the dead node no longer refreshes.
"""

from __future__ import annotations

import asyncio
import time

from tests.cluster.conftest import nodes
from tests.cluster.support import Acked, Follower, eventually, ws_client
from tests.support.processes import KizunaProcess, RedisProcess

TOTAL = 60
KILL_AFTER = 10
MISSED = 5
PRESENCE_TTL = 3.0


async def test_clients_of_a_killed_node_recover_exactly_on_others(
    redis_server: RedisProcess, uid: str
) -> None:
    channel = f"chat:crash-{uid}"
    doomed: KizunaProcess
    with nodes(redis_server, 3) as (doomed, b, c):
        followers = [Follower(f"f{i}-{uid}", [channel]) for i in range(2)]
        for follower in followers:
            await follower.attach(doomed)
        acked = Acked()
        killed, missed = asyncio.Event(), asyncio.Event()

        async def publish() -> None:
            writer = await ws_client(b, f"writer-{uid}")
            for i in range(TOTAL):
                if i == KILL_AFTER:
                    await killed.wait()
                if i == KILL_AFTER + MISSED:
                    missed.set()
                acked.add(channel, await writer.call("publish", channel=channel, data=i), i)
                await asyncio.sleep(0.01)
            await writer.aclose()

        publisher = asyncio.create_task(publish())
        for follower in followers:
            await follower.read_until(follower.has(channel, KILL_AFTER))
        doomed.kill()  # SIGKILL
        killed.set()
        for follower in followers:
            assert await follower.read_until_closed() == 1006  # no close frame: it was killed
        await asyncio.wait_for(missed.wait(), 10)  # publications the followers are missing

        for follower, node in zip(followers, (b, c), strict=True):
            await follower.attach(node)  # the test client's reconnect: subscribe with since
            [recovery] = follower.recoveries
            assert recovery["recovered"] is True
            assert len(recovery["publications"]) >= MISSED
        await publisher
        for follower in followers:
            await follower.read_until(follower.has(channel, TOTAL), within=10)
            assert follower.violations == [] and follower.told == []
            assert follower.received[channel] == acked.in_order(channel)
            await follower.close()


async def test_presence_of_a_killed_nodes_clients_expires(
    redis_server: RedisProcess, uid: str
) -> None:
    channel = f"chat:ghost-{uid}"
    doomed: KizunaProcess
    with nodes(redis_server, 2, "--presence-ttl", str(PRESENCE_TTL)) as (doomed, survivor):
        ghost = await ws_client(doomed, f"ghost-{uid}")
        await ghost.call("subscribe", channel=channel)
        watcher = await ws_client(survivor, f"watcher-{uid}")
        await watcher.call("subscribe", channel=channel)
        watching = time.monotonic()
        present = (await watcher.call("presence", channel=channel))["clients"]
        assert {entry["user"] for entry in present.values()} == {f"ghost-{uid}", f"watcher-{uid}"}
        ghost_id = next(cid for cid, e in present.items() if e["user"] == f"ghost-{uid}")

        doomed.kill()
        killed = time.monotonic()
        # Nobody removed it: the dead node refreshed it at most ttl/3 ago, so it is still there.
        assert ghost_id in (await watcher.call("presence", channel=channel))["clients"]
        assert time.monotonic() - killed < PRESENCE_TTL * 2 / 3  # so the check above was fair

        async def gone() -> bool:
            clients = (await watcher.call("presence", channel=channel))["clients"]
            return ghost_id not in clients

        took = await eventually(gone, "the dead node's presence expired", PRESENCE_TTL + 3, 0.1)
        assert took >= PRESENCE_TTL / 3  # the TTL removed it, not something faster
        # The survivor's entry outlives its TTL: its node keeps refreshing it.
        await asyncio.sleep(max(0.0, watching + PRESENCE_TTL + 0.5 - time.monotonic()))
        stats = await watcher.call("presence_stats", channel=channel)
        assert stats == {"num_clients": 1, "num_users": 1}
        await ghost.aclose()
        await watcher.aclose()
