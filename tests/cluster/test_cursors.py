"""Long-poll and SSE clients that hop between nodes carry their cursor and lose nothing.

The cursor holds every position the client has reached; no node keeps state
for it. So a client may send each request to another node (no sticky
sessions) and must still see each publication once, in order — while a
publisher keeps publishing through yet other nodes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.cluster.support import Acked, api_publish
from tests.e2e.clients import token
from tests.support.processes import KizunaProcess
from tests.transports.sse_reader import Event, collect, events

TOTAL = 30


async def _publish_steadily(
    http: httpx.AsyncClient, nodes: list[KizunaProcess], channels: list[str], acked: Acked
) -> None:
    """TOTAL publications, round-robin over nodes and channels, paced so readers interleave."""
    for i in range(TOTAL):
        channel = channels[i % len(channels)]
        response = await api_publish(http, nodes[i % len(nodes)], channel, i)
        assert response.status_code == 200, response.text
        acked.add(channel, response.json()["result"], i)
        await asyncio.sleep(0.02)


async def _poll(
    http: httpx.AsyncClient,
    node: KizunaProcess,
    channels: list[str],
    cursor: str,
    timeout: float,
    user: str,
) -> dict[str, Any]:
    response = await http.get(
        f"{node.url}/connection/poll",
        params={"channels": ",".join(channels), "cursor": cursor, "timeout": timeout},
        headers={"Authorization": f"Bearer {token(user)}"},
        timeout=timeout + 5,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _by_channel(pubs: list[dict[str, Any]], channels: list[str]) -> dict[str, list[Any]]:
    return {
        c: [((p["epoch"], p["offset"]), p["data"]) for p in pubs if p["channel"] == c]
        for c in channels
    }


async def test_long_poll_moves_between_nodes_with_its_cursor(
    three: list[KizunaProcess], uid: str, http: httpx.AsyncClient
) -> None:
    channels = [f"chat:lp-{uid}-{i}" for i in range(2)]
    user = f"poller-{uid}"
    cursor = (await _poll(http, three[0], channels, "", 0, user))["cursor"]

    # A poll waiting on node A wakes up when node B publishes (through Redis Pub/Sub).
    waiting = asyncio.create_task(_poll(http, three[0], channels, cursor, 20, user))
    await asyncio.sleep(0.3)  # let it reach its wait; if it has not, it simply reads the history
    started = time.monotonic()
    first = await api_publish(http, three[1], channels[0], "wake")
    answer = await waiting
    assert time.monotonic() - started < 10  # woken, not timed out
    assert [p["data"] for p in answer["publications"]] == ["wake"]
    acked = Acked()
    acked.add(channels[0], first.json()["result"], "wake")
    cursor = answer["cursor"]

    publisher = asyncio.create_task(_publish_steadily(http, three[1:], channels, acked))
    received: list[dict[str, Any]] = list(answer["publications"])
    hops = 0
    async with asyncio.timeout(30):
        while len(received) < TOTAL + 1:
            answer = await _poll(http, three[hops % 3], channels, cursor, 2, user)
            assert answer["gaps"] == []
            received += answer["publications"]
            cursor = answer["cursor"]
            hops += 1
    await publisher
    # Nothing after the end, and nothing twice: the cursor is past everything.
    final = await _poll(http, three[hops % 3], channels, cursor, 0, user)
    assert final["publications"] == [] and final["gaps"] == []
    assert hops >= 3  # it really moved between nodes
    got = _by_channel(received, channels)
    for channel in channels:
        assert got[channel] == acked.in_order(channel)


async def test_sse_moves_between_nodes_with_last_event_id(
    three: list[KizunaProcess], uid: str, http: httpx.AsyncClient
) -> None:
    channels = [f"chat:sse-{uid}-{i}" for i in range(2)]
    user = f"reader-{uid}"
    # The long-poll cursor of the channels' current positions is a valid Last-Event-ID:
    # the first stream then starts exactly there, whatever the publisher does meanwhile.
    last_id = (await _poll(http, three[2], channels, "", 0, user))["cursor"]
    acked = Acked()
    publisher = asyncio.create_task(_publish_steadily(http, three, channels, acked))
    received: list[Event] = []
    streams = 0
    async with asyncio.timeout(30):
        while len(received) < TOTAL:
            node = three[streams % 3]
            streams += 1
            url = f"{node.url}/connection/sse?channels={','.join(channels)}&token={token(user)}"
            async with http.stream(
                "GET", url, headers={"Last-Event-ID": last_id}, timeout=None
            ) as response:
                assert response.status_code == 200
                want = min(4, TOTAL - len(received))
                batch = await collect(
                    events(response), {"pub", "gap", "subscribe_error"}, want, timeout=10
                )
            # Leaving the block dropped the connection, possibly with events in flight:
            # they come again on the next node, from the last id this reader processed.
            assert [e.event for e in batch] == ["pub"] * want
            received += batch
            assert batch[-1].id is not None
            last_id = batch[-1].id
    await publisher
    assert streams >= 3
    got = _by_channel([e.data for e in received], channels)
    for channel in channels:
        assert got[channel] == acked.in_order(channel)
