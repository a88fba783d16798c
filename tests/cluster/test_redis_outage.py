"""Redis stopped and started again under two nodes: they recover by themselves, and no
subscriber loses an acknowledged publication without being told.

Two kinds of Redis, because they fail differently:

* ``aof`` (append-only file, fsync always): the streams survive the restart,
  so every acknowledged publication must reach every subscriber — the one
  that stayed connected and the one that reconnects with its last position;
* ``memory`` (no persistence): the restart loses the streams and the channel
  starts a new epoch. Subscribers must be *told* — close 3005 for one that
  stayed connected, ``recovered: false`` for one that reconnects — and then
  follow the new epoch exactly. Never a silent gap.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import nodes
from tests.cluster.support import (
    Acked,
    Follower,
    api_publish,
    eventually,
    ready_status,
    ws_client,
)
from tests.e2e.clients import token
from tests.support.processes import KizunaProcess, RedisProcess

PERSISTENCE = {
    "aof": ("--appendonly", "yes", "--appendfsync", "always"),
    "memory": (),
}


@pytest.mark.parametrize("persistence", ["aof", "memory"])
async def test_nodes_ride_out_a_redis_restart(
    persistence: str, tmp_path: Path, uid: str, http: httpx.AsyncClient
) -> None:
    args = PERSISTENCE[persistence]
    redis = RedisProcess(args=args, dir=str(tmp_path)).start()
    channel = f"chat:outage-{uid}"
    a: KizunaProcess
    b: KizunaProcess
    try:
        with nodes(redis, 2) as (a, b):
            stayed = Follower(f"stayed-{uid}", [channel])  # connected throughout, on B
            away = Follower(f"away-{uid}", [channel])  # leaves before the outage, back after
            await stayed.attach(b)
            await away.attach(a)
            writer = await ws_client(a, f"writer-{uid}")
            acked = Acked()

            async def publish(data: object) -> None:
                acked.add(channel, await writer.call("publish", channel=channel, data=data), data)

            for i in range(3):
                await publish(f"before {i}")
            await away.read_until(away.has(channel, 2))
            await away.close()  # at offset 2 or 3, whatever it had taken
            await stayed.read_until(stayed.has(channel, 3))
            (epoch_before, _) = stayed.last(channel)

            redis.stop()
            for node in (a, b):

                async def not_ready(node: KizunaProcess = node) -> bool:
                    return await ready_status(http, node) == 503

                await eventually(not_ready, f"{node.url}/readyz answers 503 while Redis is down")
            # A publish during the outage is refused loudly, never dropped in silence.
            reply = await writer.request("publish", {"channel": channel, "data": "lost?"})
            assert reply["error"]["code"] == 113
            response = await api_publish(http, b, channel, "lost?")
            assert (response.status_code, response.json()["error"]["code"]) == (503, 113)
            response = await http.post(  # how SSE and long-poll clients publish
                f"{b.url}/connection/publish",
                json={"channel": channel, "data": "lost?"},
                headers={"Authorization": f"Bearer {token(f'writer-{uid}')}"},
            )
            assert (response.status_code, response.json()["error"]["code"]) == (503, 113)

            redis = RedisProcess(port=redis.port, args=args, dir=str(tmp_path)).start()

            async def first_publish() -> bool:
                """Publish as soon as node A can: node B may not have resubscribed yet, and
                must then deliver it from the stream (or report the gap)."""
                reply = await writer.request("publish", {"channel": channel, "data": "after 0"})
                if "error" in reply:
                    assert reply["error"]["code"] == 113
                    return False
                acked.add(channel, reply["result"], "after 0")
                return True

            await eventually(first_publish, "a publish succeeds once Redis is back", every=0.02)
            for i in (1, 2):
                await publish(f"after {i}")
            for node in (a, b):

                async def ready(node: KizunaProcess = node) -> bool:
                    return await ready_status(http, node) == 200

                await eventually(ready, f"{node.url}/readyz answers 200 after Redis is back")
            epoch_after = acked.epochs(channel)[-1]

            if persistence == "aof":
                assert acked.epochs(channel) == [epoch_before]
                # Connected throughout: the rest arrives live, exactly once.
                await stayed.read_until(stayed.has(channel, 6))
                # Reconnecting with its last position, on the other node: exactly the missed.
                await away.attach(b)
                [recovery] = away.recoveries
                assert recovery["recovered"] is True
                await away.read_until(away.has(channel, 6))
                for follower in (stayed, away):
                    assert follower.told == []
                    assert follower.received[channel] == acked.in_order(channel)
            else:
                assert acked.epochs(channel) == [epoch_before, epoch_after]  # Redis lost it
                # Connected throughout: told with 3005, then it reconnects with its position.
                assert await stayed.read_until_closed() == 3005
                await stayed.attach(a)
                await away.attach(b)
                for follower in (stayed, away):
                    assert follower.recoveries[-1]["recovered"] is False
                    assert ("recovered false", channel) in follower.told
                    assert follower.last(channel) == (epoch_after, 3)
                await publish("after the gap")
                for follower in (stayed, away):
                    await follower.read_until(follower.reached(channel, 4))
                    # What it did get is exactly what was acknowledged, epoch by epoch:
                    # a prefix of the old one, then the new one from where it was told.
                    *old, newest = follower.received[channel]
                    assert old == acked.in_order(channel, epoch_before)[: len(old)]
                    assert len(old) >= 2
                    assert newest == acked.in_order(channel)[-1]
            for follower in (stayed, away):
                assert follower.violations == []
                await follower.close()
            await writer.aclose()
    finally:
        redis.stop()
