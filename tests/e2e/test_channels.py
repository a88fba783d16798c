"""Channels end to end: publish and receive across two client libraries, history, presence.

The two subscribers are different WebSocket implementations (Python
``websockets`` and Node ``ws``), so "each message exactly once, in order" is
checked on what real clients decode from the wire, not on server internals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest

from kizuna.protocol.codes import reconnect_allowed
from tests.e2e.clients import Api, WireClient, token
from tests.e2e.conftest import OpenNode, OpenPy
from tests.support.processes import SMALL_HISTORY, KizunaProcess, serve


def assert_exact_sequence(pubs: Sequence[Mapping[str, Any]], expected: Sequence[Any]) -> None:
    """Each expected payload exactly once, in order, with consecutive offsets."""
    assert [p["data"] for p in pubs] == list(expected)
    offsets = [p["offset"] for p in pubs]
    assert offsets == list(range(offsets[0], offsets[0] + len(expected)))


@pytest.mark.node
async def test_python_and_node_clients_exchange_every_message_once_in_order(
    server: KizunaProcess, open_py: OpenPy, open_node: OpenNode, uid: str
):
    channel = f"chat:room-{uid}"
    py = await open_py(server.ws_url)
    node = await open_node(server.ws_url)
    py_info = await py.connect(token(f"py-{uid}"))
    node_info = await node.connect(token(f"node-{uid}"))
    for client in (py, node):
        result = await client.call("subscribe", channel=channel)
        assert result["recoverable"] is True
        assert result["offset"] == 0

    # Node publishes 0..9 (pipelined), then Python publishes 10..19 (pipelined).
    async def publish_all(client: WireClient, numbers: range) -> list[int]:
        ids = []
        for n in numbers:
            cid = client.next_id()
            ids.append(cid)
            await client.send(
                {"id": cid, "method": "publish", "params": {"channel": channel, "data": {"n": n}}}
            )
        offsets = []
        for cid in ids:
            reply = await client.reply_to(cid)
            offsets.append(reply["result"]["offset"])
        return offsets

    assert await publish_all(node, range(10)) == list(range(1, 11))
    assert await publish_all(py, range(10, 20)) == list(range(11, 21))

    expected = [{"n": n} for n in range(20)]
    for client in (py, node):
        pubs = await client.publications(channel)
        assert_exact_sequence(pubs, expected)
        assert {p["epoch"] for p in pubs} == {result["epoch"]}
        users = [p["info"]["user"] for p in pubs]
        assert users == [f"node-{uid}"] * 10 + [f"py-{uid}"] * 10
        clients = {p["info"]["client"] for p in pubs}
        assert clients == {py_info["client"], node_info["client"]}


async def test_unsubscribed_client_stops_receiving(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channel = f"chat:unsub-{uid}"
    client = await open_py(server.ws_url)
    await client.connect(token(f"u-{uid}"))
    await client.call("subscribe", channel=channel)
    await api.publish(channel, 1)
    assert await client.call("unsubscribe", channel=channel) == {}
    await api.publish(channel, 2)
    assert [p["data"] for p in await client.publications(channel)] == [1]


# --- history ---------------------------------------------------------------------------------


@pytest.fixture
async def history_channel(api: Api, uid: str) -> tuple[str, str]:
    """A channel with five publications ``{"n": 1..5}``; returns (channel, epoch)."""
    channel = f"chat:hist-{uid}"
    epochs = set()
    for n in range(1, 6):
        result = await api.publish(channel, {"n": n})
        assert result["offset"] == n
        epochs.add(result["epoch"])
    assert len(epochs) == 1
    return channel, epochs.pop()


async def history_of(client: WireClient, channel: str, **params: object) -> list[int]:
    result = await client.call("history", channel=channel, **params)
    assert result["offset"] == 5
    return [p["data"]["n"] for p in result["publications"]]


async def test_history_limit_reverse_and_since(
    server: KizunaProcess, open_py: OpenPy, uid: str, history_channel: tuple[str, str]
):
    channel, epoch = history_channel
    client = await open_py(server.ws_url)
    await client.connect(token(f"h-{uid}"))
    assert await history_of(client, channel) == [1, 2, 3, 4, 5]
    assert await history_of(client, channel, limit=2) == [1, 2]
    assert await history_of(client, channel, limit=0) == []
    assert await history_of(client, channel, reverse=True) == [5, 4, 3, 2, 1]
    assert await history_of(client, channel, limit=2, reverse=True) == [5, 4]
    since = {"offset": 3, "epoch": epoch}
    assert await history_of(client, channel, since=since) == [4, 5]
    assert await history_of(client, channel, since=since, limit=1) == [4]
    full = await client.call("history", channel=channel)
    assert full["epoch"] == epoch
    assert [p["offset"] for p in full["publications"]] == [1, 2, 3, 4, 5]


# --- recovery --------------------------------------------------------------------------------


async def test_recovery_after_reconnect_returns_exactly_the_missed_publications(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channel = f"chat:rec-{uid}"
    user = f"r-{uid}"
    first = await open_py(server.ws_url)
    await first.connect(token(user))
    await first.call("subscribe", channel=channel)
    for n in (1, 2):
        await api.publish(channel, {"n": n})
    seen = await first.publications(channel)
    assert [p["data"]["n"] for p in seen] == [1, 2]
    last = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
    await first.aclose()

    for n in (3, 4, 5):  # missed while away
        await api.publish(channel, {"n": n})

    second = await open_py(server.ws_url)
    await second.connect(token(user))
    result = await second.call("subscribe", channel=channel, since=last)
    assert result["recovered"] is True
    assert result["offset"] == 5
    assert result["epoch"] == last["epoch"]
    assert [(p["offset"], p["data"]["n"]) for p in result["publications"]] == [
        (3, 3),
        (4, 4),
        (5, 5),
    ]
    # Live delivery resumes right after, with nothing replayed twice.
    await api.publish(channel, {"n": 6})
    assert [(p["offset"], p["data"]["n"]) for p in await second.publications(channel)] == [(6, 6)]


@pytest.mark.node
async def test_node_client_recovers_with_nothing_missed(
    server: KizunaProcess, open_node: OpenNode, uid: str
):
    channel = f"chat:rec-node-{uid}"
    first = await open_node(server.ws_url)
    await first.connect(token(f"n-{uid}"))
    sub = await first.call("subscribe", channel=channel)
    await first.aclose()
    second = await open_node(server.ws_url)
    await second.connect(token(f"n-{uid}"))
    result = await second.call(
        "subscribe", channel=channel, since={"offset": sub["offset"], "epoch": sub["epoch"]}
    )
    assert result["recovered"] is True
    assert result["publications"] == []


async def test_recovery_fails_when_publications_fell_out_of_history(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channel = f"small:rec-{uid}"
    client = await open_py(server.ws_url)
    await client.connect(token(f"s-{uid}"))
    start = await client.call("subscribe", channel=channel)
    assert start["offset"] == 0
    await client.call("unsubscribe", channel=channel)
    for n in range(1, 6):
        await api.publish(channel, {"n": n})
    epoch = start["epoch"]

    # Offset 1 is gone from a history of 3 (it holds 3, 4, 5): since=1 needs offset 2.
    lost = await client.call("subscribe", channel=channel, since={"offset": 1, "epoch": epoch})
    assert lost["recovered"] is False
    assert "publications" not in lost
    assert (lost["offset"], lost["epoch"]) == (5, epoch)
    await client.call("unsubscribe", channel=channel)

    # The boundary: since=2 needs exactly what the history still holds.
    since = {"offset": 5 - SMALL_HISTORY, "epoch": epoch}
    kept = await client.call("subscribe", channel=channel, since=since)
    assert kept["recovered"] is True
    assert [p["data"]["n"] for p in kept["publications"]] == [3, 4, 5]


async def test_recovery_fails_when_the_epoch_differs(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channel = f"chat:epoch-{uid}"
    await api.publish(channel, 1)
    client = await open_py(server.ws_url)
    await client.connect(token(f"e-{uid}"))
    result = await client.call(
        "subscribe", channel=channel, since={"offset": 0, "epoch": "not-this-epoch"}
    )
    assert result["recovered"] is False
    assert "publications" not in result
    assert result["offset"] == 1
    assert result["epoch"] != "not-this-epoch"


async def test_recovery_across_a_server_restart_reports_a_new_epoch(
    http: httpx.AsyncClient, open_py: OpenPy, uid: str
):
    """The memory broker loses history on restart; a client must learn that, not get a gap."""
    channel = f"chat:restart-{uid}"
    with serve() as before:
        port = before.port
        await Api(http, before).publish(channel, 1)
        client = await open_py(before.ws_url)
        await client.connect(token(f"x-{uid}"))
        old = await client.call("subscribe", channel=channel)
        assert old["offset"] == 1
    closed = await client.expect_close()
    assert reconnect_allowed(closed.code), closed

    with serve(port=port) as restarted:
        await Api(http, restarted).publish(channel, 2)
        again = await open_py(restarted.ws_url)
        await again.connect(token(f"x-{uid}"))
        result = await again.call(
            "subscribe", channel=channel, since={"offset": old["offset"], "epoch": old["epoch"]}
        )
        assert result["recovered"] is False
        assert result["epoch"] != old["epoch"]
        assert result["offset"] == 1


# --- presence --------------------------------------------------------------------------------


@pytest.mark.node
async def test_presence_stats_and_join_leave_pushes(
    server: KizunaProcess, open_py: OpenPy, open_node: OpenNode, uid: str
):
    channel = f"chat:pres-{uid}"
    alice, bob = f"alice-{uid}", f"bob-{uid}"
    watcher = await open_py(server.ws_url)
    watcher_id = (await watcher.connect(token(alice)))["client"]
    await watcher.call("subscribe", channel=channel)

    node = await open_node(server.ws_url)
    node_id = (await node.connect(token(bob)))["client"]
    await node.call("subscribe", channel=channel)
    second = await open_py(server.ws_url)  # alice again, on a second connection
    second_id = (await second.connect(token(alice)))["client"]
    await second.call("subscribe", channel=channel)

    # Every subscriber hears each join from the moment it is subscribed, its own included.
    me, them, again = (
        {"user": alice, "client": watcher_id},
        {"user": bob, "client": node_id},
        {"user": alice, "client": second_id},
    )
    assert [(await watcher.expect_push("join", channel))["info"] for _ in range(3)] == [
        me,
        them,
        again,
    ]
    assert [(await node.expect_push("join", channel))["info"] for _ in range(2)] == [them, again]

    presence = await watcher.call("presence", channel=channel)
    assert presence["clients"] == {watcher_id: me, node_id: them, second_id: again}
    stats = await node.call("presence_stats", channel=channel)
    assert stats == {"num_clients": 3, "num_users": 2}

    await node.aclose()
    assert (await watcher.expect_push("leave", channel))["info"] == them
    await second.call("unsubscribe", channel=channel)
    assert (await watcher.expect_push("leave", channel))["info"] == again
    assert await watcher.call("presence_stats", channel=channel) == {
        "num_clients": 1,
        "num_users": 1,
    }
    # Every join and leave was pushed once: nothing else is pending for the watcher.
    assert [m for m in await watcher.barrier() if m.get("push") in {"join", "leave"}] == []
