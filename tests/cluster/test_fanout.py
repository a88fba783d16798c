"""Three nodes on one Redis behave as one server: fan-out, presence, join/leave, the HTTP API.

Publishers on different nodes (WebSocket on two, the HTTP API on the third)
publish concurrently into two channels; every subscriber, on every node,
must see each channel's publications exactly once, in offset order, each
offset carrying the data whose publish was acknowledged with that offset.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.cluster.support import Acked, Follower, api_publish, ws_client
from tests.e2e.clients import PyClient, token
from tests.support.processes import API_KEY, KizunaProcess

PER_PUBLISHER = 40


async def test_publications_reach_every_node_once_and_in_order(
    three: list[KizunaProcess], uid: str, http: httpx.AsyncClient
) -> None:
    channels = [f"chat:fan-{uid}-{i}" for i in range(2)]
    followers = [Follower(f"sub{i}-{uid}", channels) for i in range(3)]
    for follower, node in zip(followers, three, strict=True):
        await follower.attach(node)
        assert [follower.last(c)[1] for c in channels] == [0, 0]

    acked = Acked()

    async def over_websocket(node: KizunaProcess, name: str) -> None:
        client = await ws_client(node, f"{name}-{uid}")
        try:
            for i in range(PER_PUBLISHER):
                for channel in channels:
                    data = {"p": name, "i": i}
                    acked.add(
                        channel, await client.call("publish", channel=channel, data=data), data
                    )
        finally:
            await client.aclose()

    async def over_api(node: KizunaProcess) -> None:
        for i in range(PER_PUBLISHER):
            for channel in channels:
                data = {"p": "api", "i": i}
                response = await api_publish(http, node, channel, data)
                assert response.status_code == 200, response.text
                acked.add(channel, response.json()["result"], data)

    await asyncio.gather(
        over_websocket(three[0], "a"), over_websocket(three[1], "b"), over_api(three[2])
    )
    # A last publication per channel: per-channel order means a duplicate of anything
    # earlier would have to arrive before it.
    for channel in channels:
        response = await api_publish(http, three[2], channel, "end")
        acked.add(channel, response.json()["result"], "end")

    total = 3 * PER_PUBLISHER + 1
    for channel in channels:
        offsets = [pos[1] for pos, _ in acked.in_order(channel)]
        assert offsets == list(range(1, total + 1))  # one offset per acknowledged publish
        assert len({pos[0] for pos, _ in acked.in_order(channel)}) == 1

    for follower in followers:
        await follower.read_until(follower.has_everywhere(total), within=20)
        assert follower.client is not None
        stray = [m for m in await follower.client.barrier() if m.get("push") == "pub"]
        assert stray == []
        assert follower.violations == []
        for channel in channels:
            assert follower.received[channel] == acked.in_order(channel)
            for name in ("a", "b", "api"):  # each publisher's own order survived
                mine = [d["i"] for _, d in follower.received[channel] if _is(d, name)]
                assert mine == list(range(PER_PUBLISHER))
        await follower.close()


def _is(data: Any, publisher: str) -> bool:
    return isinstance(data, dict) and data["p"] == publisher


async def _joined(client: PyClient, channel: str, who: str) -> dict[str, Any]:
    return await client.expect(
        lambda m: m.get("push") == "join" and m["channel"] == channel and m["info"]["client"] == who
    )


async def _left(client: PyClient, channel: str, who: str) -> dict[str, Any]:
    return await client.expect(
        lambda m: (
            m.get("push") == "leave" and m["channel"] == channel and m["info"]["client"] == who
        )
    )


async def test_presence_and_join_leave_span_nodes(
    three: list[KizunaProcess], uid: str, http: httpx.AsyncClient
) -> None:
    channel = f"chat:presence-{uid}"
    users = [f"user{i}-{uid}" for i in range(3)]
    clients: list[PyClient] = []
    ids: list[str] = []
    for node, user in zip(three, users, strict=True):
        client = await PyClient.open(node.ws_url)
        ids.append((await client.connect(token(user)))["client"])
        await client.call("subscribe", channel=channel)
        for earlier in clients:  # a join on this node reaches members on the others
            await _joined(earlier, channel, ids[-1])
        clients.append(client)

    expected = {cid: {"user": u, "client": cid} for cid, u in zip(ids, users, strict=True)}
    for node, client in zip(three, clients, strict=True):
        assert (await client.call("presence", channel=channel))["clients"] == expected
        stats = await client.call("presence_stats", channel=channel)
        assert stats == {"num_clients": 3, "num_users": 3}
        response = await http.post(
            f"{node.url}/api/presence",
            json={"channel": channel},
            headers={"Authorization": f"apikey {API_KEY}"},
        )
        assert response.json()["result"]["clients"] == expected

    # A second connection of user0, on another node: one more client, not one more user.
    again = await PyClient.open(three[2].ws_url)
    again_id = (await again.connect(token(users[0])))["client"]
    await again.call("subscribe", channel=channel)
    await _joined(clients[1], channel, again_id)
    stats = await clients[1].call("presence_stats", channel=channel)
    assert stats == {"num_clients": 4, "num_users": 3}

    # An unsubscribe on node C and a dropped socket on node A: leaves reach node B.
    await clients[2].call("unsubscribe", channel=channel)
    await _left(clients[1], channel, ids[2])
    await _left(clients[0], channel, ids[2])
    await clients[0].aclose()
    await _left(clients[1], channel, ids[0])
    presence = (await clients[1].call("presence", channel=channel))["clients"]
    assert set(presence) == {ids[1], again_id}
    for client in (clients[1], clients[2], again):
        await client.aclose()
