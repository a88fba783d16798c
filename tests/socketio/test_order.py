"""Order on the wire, end to end: what skips python-engineio's writer overtakes nothing.

Packets to an upgraded WebSocket are written at once when nothing waits
before them (socketio_websocket.py); everything else goes through the
Engine.IO queue. Here real socket.io-client sockets on both transports share
a room while publications from two Socket.IO members (with acknowledgements)
and from the HTTP API arrive in a burst, and a late member joins mid-burst:

* every member that was there from the start sees the same room history, in
  the same order — publications with consecutive offsets, and the late
  member's ``userJoined`` at the same place;
* a member that publishes gets its acknowledgements in the order it emitted,
  each after the ``newMessage`` it acknowledges (kizuna fans a publication out
  before it answers);
* the late member's publications continue, without a gap, up to the last.

And a WebSocket member that stops reading for a while, until its socket
pushes back and packets wait in its outbox, then catches up while
publications keep coming: it gets every one, in order (a packet written at
once must not overtake those waiting).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from typing import Any

import httpx

from tests.socketio.clients import TIMEOUT, SioDriver, SioSocket, token
from tests.support.processes import API_KEY, KizunaProcess

BURST = 20
"""Publications per source: each of the two publishing members and the HTTP API."""

Event = dict[str, Any]


async def open_member(sio: SioDriver, url: str, user: str, transport: str) -> SioSocket:
    sock = await sio.open(url, auth={"token": token(user)}, transports=[transport])
    assert sock.connected, sock.first
    return sock


def room_history(events: list[Event], sock: SioSocket) -> list[tuple[str, Any]]:
    """What ``sock`` saw of the room, in order: ("m", offset) and ("joined", user)."""
    seen: list[tuple[str, Any]] = []
    for e in events:
        if e["sock"] != sock.name or e["event"] != "message":
            continue
        if e["name"] == "newMessage":
            seen.append(("m", e["args"][1]["offset"]))
        elif e["name"] == "userJoined":
            seen.append(("joined", e["args"][0]["userId"]))
    return seen


async def collect(sio: SioDriver, done: Any) -> list[Event]:
    """Every event, in arrival order, until ``done(events)`` holds."""
    events: list[Event] = []
    async with asyncio.timeout(3 * TIMEOUT):
        while not done(events):
            events.append(await sio.expect(lambda e: True))
    return events


async def test_burst_with_acks_and_a_join_keeps_order_on_both_transports(
    server: KizunaProcess, sio: SioDriver, uid: str, http: httpx.AsyncClient
) -> None:
    room = f"room-{uid}"
    url = server.url + "/chat"
    talkers = [
        await open_member(sio, url, f"ws-talker-{uid}", "websocket"),
        await open_member(sio, url, f"poll-talker-{uid}", "polling"),
    ]
    watchers = [
        await open_member(sio, url, f"ws-watcher-{uid}", "websocket"),
        await open_member(sio, url, f"poll-watcher-{uid}", "polling"),
    ]
    late = await open_member(sio, url, f"late-{uid}", "websocket")
    members = talkers + watchers
    for sock in members:
        assert (await sock.ack("joinRoom", room))["ok"]
    await sio.drain(0.3)

    ids = itertools.count(100_000)  # ack ids of this burst; the driver's own count from 1
    emitted: dict[str, list[int]] = {sock.name: [] for sock in talkers}
    late_join = next(ids)
    for n in range(BURST):
        for sock in talkers:
            cid = next(ids)
            emitted[sock.name].append(cid)
            content = f"{sock.name}-{n}"
            await sio.command(
                op="emit",
                sock=sock.name,
                id=cid,
                event="message",
                args=[{"roomId": room, "content": content}],
                ack=True,
            )
        if n == BURST // 2:
            await sio.command(
                op="emit", sock=late.name, id=late_join, event="joinRoom", args=[room], ack=True
            )
        response = await http.post(
            f"{server.url}/api/publish",
            json={"channel": f"chat:{room}", "data": {"content": f"api-{n}"}},
            headers={"Authorization": f"apikey {API_KEY}"},
        )
        assert response.status_code == 200, response.text

    total = 3 * BURST

    def done(events: list[Event]) -> bool:
        for sock in members:
            if sum(1 for kind, _ in room_history(events, sock) if kind == "m") < total:
                return False
        acks = sum(1 for e in events if e["event"] == "ack")
        return acks == 2 * BURST + 1 and ("m", total) in room_history(events, late)

    events = await collect(sio, done)

    histories = [room_history(events, sock) for sock in members]
    assert all(h == histories[0] for h in histories), "members saw the room in different orders"
    offsets = [value for kind, value in histories[0] if kind == "m"]
    assert offsets == list(range(1, total + 1))
    assert [v for kind, v in histories[0] if kind == "joined"] == [f"late-{uid}"]

    for sock in talkers:
        mine = [e for e in events if e["sock"] == sock.name]
        acks = [e for e in mine if e["event"] == "ack"]
        assert [a["id"] for a in acks] == emitted[sock.name], "acks out of emit order"
        for ack in acks:
            offset = ack["args"][0]["offset"]
            position = mine.index(ack)
            delivered = [
                e["args"][1]["offset"]
                for e in mine[:position]
                if e["event"] == "message" and e["name"] == "newMessage"
            ]
            assert offset in delivered, f"ack for offset {offset} overtook its newMessage"

    late_offsets = [v for kind, v in room_history(events, late) if kind == "m"]
    assert late_offsets == list(range(late_offsets[0], total + 1)), "the late member lost one"
    joined = next(e for e in events if e["sock"] == late.name and e["event"] == "ack")
    assert joined["args"][0]["ok"] is True
    for sock, transport in zip(
        members, ["websocket", "polling", "websocket", "polling"], strict=True
    ):
        assert await sock.transport() == transport


async def test_websocket_member_that_falls_behind_catches_up_in_order(
    server: KizunaProcess, uid: str, http: httpx.AsyncClient
) -> None:
    room = f"room-{uid}"
    lagging = await SioDriver.start()
    try:
        sock = await open_member(lagging, server.url + "/chat", f"lag-{uid}", "websocket")
        assert (await sock.ack("joinRoom", room))["ok"]
        await lagging.drain(0.2)
        blob = "x" * 50_000
        behind, total = 120, 300  # 6 MB while stopped: more than loopback buffers hold

        async def publish(n: int) -> None:
            response = await http.post(
                f"{server.url}/api/publish",
                json={"channel": f"chat:{room}", "data": {"n": n, "blob": blob}},
                headers={"Authorization": f"apikey {API_KEY}"},
            )
            assert response.status_code == 200, response.text

        os.kill(lagging.process.pid, signal.SIGSTOP)
        try:
            for n in range(behind):
                await publish(n)
        finally:
            os.kill(lagging.process.pid, signal.SIGCONT)
        for n in range(behind, total, 10):  # while it catches up, several at a time
            await asyncio.gather(*(publish(m) for m in range(n, min(n + 10, total))))
        offsets = [(await sock.expect_event("newMessage"))[1]["offset"] for _ in range(total)]
        assert offsets == list(range(1, total + 1))
    finally:
        await lagging.aclose()
