"""Connection limits are counted per node, which docs/scaling.md tells operators to plan for.

Nodes share channels, history and presence through Redis, but not their
connection counts: a user at ``max_connections_per_user`` on one node can
still connect to another.
"""

from __future__ import annotations

from kizuna.protocol.codes import DisconnectCode
from tests.cluster.conftest import nodes
from tests.cluster.support import ws_client
from tests.e2e.clients import PyClient, token
from tests.support.processes import KizunaProcess, RedisProcess


async def test_connections_per_user_are_counted_per_node(
    redis_server: RedisProcess, uid: str
) -> None:
    user = f"busy-{uid}"
    a: KizunaProcess
    b: KizunaProcess
    with nodes(redis_server, 2, "--max-connections-per-user", "1") as (a, b):
        first = await ws_client(a, user)
        refused = await PyClient.open(a.ws_url)
        await refused.send({"id": 1, "method": "connect", "params": {"token": token(user)}})
        assert (await refused.expect_close()).code == DisconnectCode.CONNECTION_LIMIT
        elsewhere = await ws_client(b, user)  # the same user, at its limit on node A
        assert await elsewhere.call("ping") == {}
        assert await first.call("ping") == {}
        for client in (first, refused, elsewhere):
            await client.aclose()
