"""One client's publishes sent back to back, on a Redis-backed node: pipelined, never reordered.

The node hands a client's publishes to Redis without waiting for each reply
(core/client.py, "Pipelined publishes"; broker/redis_pipeline.py). What the
client sees must not change: every publication delivered once and in order,
replies in command order with increasing offsets, its own publications visible
to the next command, and a refusal (113) — not silence — while Redis is down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import nodes
from tests.cluster.support import ws_client
from tests.e2e.clients import PyClient
from tests.support.processes import KizunaProcess, RedisProcess, write_config

COUNT = 300
"""More than client.MAX_PIPELINED_PUBLISHES, so the in-flight bound is reached."""

NO_HISTORY = """
[namespaces.chat]

[namespaces.live]
history_size = 0
presence = false
join_leave = false
"""


@pytest.fixture(scope="module")
def node(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KizunaProcess]:
    config = write_config(tmp_path_factory.mktemp("pipelined"), NO_HISTORY)
    with nodes(redis_server, 1, "--config", str(config)) as (started,):
        yield started


async def send_publishes(
    client: PyClient, channel: str, count: int, first: int = 1000
) -> list[int]:
    """Send ``count`` publishes, one frame each, without reading a reply; their ids."""
    ids = list(range(first, first + count))
    for cid, i in zip(ids, range(count), strict=True):
        await client.send_raw(
            json.dumps({"id": cid, "method": "publish", "params": {"channel": channel, "data": i}})
        )
    return ids


async def replies(client: PyClient, ids: list[int]) -> list[dict[str, Any]]:
    """The replies to ``ids``, asserting that they arrived in that order."""
    wanted = set(ids)
    got: list[dict[str, Any]] = []
    while len(got) < len(ids):
        got.append(await client.expect(lambda m: m.get("id") in wanted))
    assert [m["id"] for m in got] == ids, "replies out of command order"
    return got


@pytest.mark.parametrize("namespace", ["chat", "live"])
async def test_back_to_back_publishes_arrive_complete_and_in_order(
    node: KizunaProcess, uid: str, namespace: str
) -> None:
    channel = f"{namespace}:pipelined-{uid}"
    reader = await ws_client(node, f"reader-{uid}")
    writer = await ws_client(node, f"writer-{uid}")
    try:
        await reader.call("subscribe", channel=channel)
        ids = await send_publishes(writer, channel, COUNT)
        # Sent right behind the publishes: it must wait for them, and see them all.
        history_id = ids[-1] + 1
        if namespace == "chat":
            await writer.send_raw(
                json.dumps({"id": history_id, "method": "history", "params": {"channel": channel}})
            )
        answers = await replies(writer, ids)
        assert all("error" not in m for m in answers), answers[:3]
        if namespace == "chat":
            offsets = [m["result"]["offset"] for m in answers]
            assert offsets == list(range(offsets[0], offsets[0] + COUNT))
            assert len({m["result"]["epoch"] for m in answers}) == 1
            history = await writer.reply_to(history_id)
            pubs = history["result"]["publications"]
            assert [p["data"] for p in pubs][-COUNT:] == list(range(COUNT))[-len(pubs) :]
            assert history["result"]["offset"] == offsets[-1]
        received: list[Any] = []
        while len(received) < COUNT:
            push = await reader.expect_push("pub", channel)
            received.append(push["data"])
        assert received == list(range(COUNT))
    finally:
        await reader.aclose()
        await writer.aclose()


async def test_a_repeated_idempotency_key_in_one_burst_publishes_once(
    node: KizunaProcess, uid: str
) -> None:
    channel = f"chat:idempotent-{uid}"
    writer = await ws_client(node, f"writer-{uid}")
    try:
        ids = [1000, 1001, 1002]
        for cid in ids:
            params = {"channel": channel, "data": cid, "idempotency_key": f"k-{uid}"}
            await writer.send_raw(json.dumps({"id": cid, "method": "publish", "params": params}))
        positions = {
            (m["result"]["epoch"], m["result"]["offset"]) for m in await replies(writer, ids)
        }
        assert len(positions) == 1
        history = await writer.call("history", channel=channel)
        assert [p["data"] for p in history["publications"]] == [1000]
    finally:
        await writer.aclose()


async def test_back_to_back_publishes_while_redis_is_down_are_refused(
    tmp_path: Path, uid: str
) -> None:
    redis = RedisProcess(dir=str(tmp_path)).start()
    try:
        with nodes(redis, 1) as (started,):
            writer = await ws_client(started, f"writer-{uid}")
            try:
                channel = f"chat:down-{uid}"
                await writer.call("publish", channel=channel, data="before")
                redis.stop()
                ids = await send_publishes(writer, channel, 20)
                answers = await replies(writer, ids)
                assert [m.get("error", {}).get("code") for m in answers] == [113] * 20
                redis = RedisProcess(port=redis.port, dir=str(tmp_path)).start()
                for _ in range(100):  # the next batch connects anew
                    reply = await writer.request("publish", {"channel": channel, "data": "after"})
                    if "result" in reply:
                        break
                    assert reply["error"]["code"] == 113
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("publishing did not resume after Redis came back")
            finally:
                await writer.aclose()
    finally:
        redis.stop()
