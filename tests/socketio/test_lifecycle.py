"""How Socket.IO connections end: kizuna's codes mapped onto Socket.IO's reconnect behaviour.

A code that allows reconnecting (3xxx) closes the Engine.IO connection, so
socket.io-client reconnects by itself; a terminal code (4xxx) is a namespace
disconnect, after which it does not. Either way ``serverDisconnect`` tells the
application the code first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.socketio.clients import SioDriver, closed_by_server, token
from tests.socketio.conftest import serve_socketio
from tests.support.processes import API_KEY, KizunaProcess

QUEUE_LIMIT = 64 * 1024
CONNECT_TIMEOUT = 1.0


COMMAND_BURST = 5
NAMESPACES = """
[namespaces.chat]

[namespaces.notifications]
presence = false
join_leave = false
allow_publish = false

[namespaces.ticker]
drop_oldest = true
history_size = 0
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KizunaProcess]:
    """A small outbound queue, two connections per user, a short connect time, a command
    rate, and a drop-oldest namespace ``ticker`` (Socket.IO ``/ticker``)."""
    config = tmp_path_factory.mktemp("socketio-limits") / "kizuna.toml"
    config.write_text(NAMESPACES)
    with serve_socketio(
        "--config",
        str(config),
        "--command-rate",
        "1",
        "--command-burst",
        str(COMMAND_BURST),
        "--client-queue-max-bytes",
        str(QUEUE_LIMIT),
        "--max-connections-per-user",
        "2",
        "--ping-timeout",
        "30",
        "--connect-timeout",
        str(CONNECT_TIMEOUT),
    ) as process:
        yield process


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 if absent)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_terminal_code_is_a_namespace_disconnect(
    server: KizunaProcess, sio: SioDriver, uid: str, http: httpx.AsyncClient
) -> None:
    """The API disconnects a user (4003): serverDisconnect, then 'io server disconnect'."""
    user = f"victor-{uid}"
    socks = [
        await sio.open(server.url + "/chat", auth={"token": token(user)}, transports=[transport])
        for transport in ("websocket", "polling")
    ]
    response = await http.post(
        f"{server.url}/api/disconnect",
        json={"user": user},
        headers={"Authorization": f"apikey {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["disconnected"] == 2
    for sock in socks:
        notice = await sock.expect_event("serverDisconnect")
        assert notice == [{"code": 4003, "reason": "forbidden", "reconnect": False}]
        assert (await sock.expect("disconnect"))["reason"] == "io server disconnect"


async def test_connection_limit_is_connect_error(limited: KizunaProcess, sio: SioDriver) -> None:
    auth = {"token": token("walt")}
    for _ in range(2):
        assert (await sio.open(limited.url + "/chat", auth=auth, transports=["polling"])).connected
    third = await sio.open(limited.url + "/notifications", auth=auth, transports=["polling"])
    assert third.first["event"] == "connect_error"
    assert third.first["data"]["code"] == 3009


async def test_slow_client_is_disconnected_and_others_get_everything(
    limited: KizunaProcess, sio: SioDriver, uid: str, http: httpx.AsyncClient
) -> None:
    """A polling client that stops polling overflows its queue (3002); the room goes on."""
    room = f"room-{uid}"
    url = limited.url + "/chat"
    fast = await sio.open(url, auth={"token": token(f"fast-{uid}")}, transports=["websocket"])
    stalled = await SioDriver.start()
    try:
        slow = await stalled.open(url, auth={"token": token(f"slow-{uid}")}, transports=["polling"])
        for sock in (fast, slow):
            assert (await sock.ack("joinRoom", room))["ok"]
        await stalled.drain(0.2)
        before = (await http.get(f"{limited.url}/metrics")).text
        os.kill(stalled.process.pid, signal.SIGSTOP)  # it stops polling: its queue only grows
        try:
            blob = "x" * 8000
            count = 3 * QUEUE_LIMIT // len(blob)
            for n in range(count):
                response = await http.post(
                    f"{limited.url}/api/publish",
                    json={"channel": f"chat:{room}", "data": {"n": n, "blob": blob}},
                    headers={"Authorization": f"apikey {API_KEY}"},
                )
                assert response.status_code == 200, response.text
            got = [(await fast.expect_event("newMessage"))[0]["n"] for _ in range(count)]
            assert got == list(range(count)), "a slow member held up the room"
            after = (await http.get(f"{limited.url}/metrics")).text
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        name = "kizuna_slow_client_disconnects_total"
        assert (
            metric(after, name, transport="socketio")
            == metric(before, name, transport="socketio") + 1
        )
        closed = "websocket_disconnections_total"
        labels = {"transport": "socketio", "code": "3002"}
        assert metric(after, closed, **labels) == metric(before, closed, **labels) + 1
        # Once it runs again it is told, and sees the connection end; it never got everything.
        await slow.expect("disconnect")
        events = await stalled.drain(0.2)
        received = [e for e in events if e.get("name") == "newMessage"]
        assert len(received) < count
        notices = [e["args"] for e in events if e.get("name") == "serverDisconnect"]
        # python-engineio may drop a closed polling session before the client's next poll;
        # when the notice arrives it must carry the slow code.
        assert all(n == [{"code": 3002, "reason": "slow", "reconnect": True}] for n in notices)
    finally:
        await stalled.aclose()


async def test_slow_websocket_client_is_disconnected_and_others_get_everything(
    limited: KizunaProcess, sio: SioDriver, uid: str, http: httpx.AsyncClient
) -> None:
    """A WebSocket client that stops reading: packets written straight to its socket fill
    the kernel's and uvicorn's buffers, the rest wait in its outbox, which overflows (3002)."""
    room = f"room-{uid}"
    url = limited.url + "/chat"
    fast = await sio.open(url, auth={"token": token(f"fast-{uid}")}, transports=["websocket"])
    stalled = await SioDriver.start()
    try:
        slow = await stalled.open(
            url, auth={"token": token(f"slow-{uid}")}, transports=["websocket"]
        )
        for sock in (fast, slow):
            assert (await sock.ack("joinRoom", room))["ok"]
        await stalled.drain(0.2)
        name = "kizuna_slow_client_disconnects_total"
        before = metric((await http.get(f"{limited.url}/metrics")).text, name, transport="socketio")
        os.kill(stalled.process.pid, signal.SIGSTOP)  # it stops reading: the buffers fill up
        try:
            blob = "x" * 60_000
            sent = 0
            while sent < 2000:  # far more than loopback TCP buffers hold (a few MB)
                response = await http.post(
                    f"{limited.url}/api/publish",
                    json={"channel": f"chat:{room}", "data": {"n": sent, "blob": blob}},
                    headers={"Authorization": f"apikey {API_KEY}"},
                )
                assert response.status_code == 200, response.text
                sent += 1
                if sent % 10 == 0:
                    text = (await http.get(f"{limited.url}/metrics")).text
                    if metric(text, name, transport="socketio") > before:
                        break
            assert metric(text, name, transport="socketio") == before + 1
            got = [(await fast.expect_event("newMessage"))[0]["n"] for _ in range(sent)]
            assert got == list(range(sent)), "a slow member held up the room"
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        # Once it reads again it gets what its socket held, then sees the connection end.
        await slow.expect("disconnect", within=15)
        events = await stalled.drain(0.2)
        received = [e["args"][0]["n"] for e in events if e.get("name") == "newMessage"]
        assert len(received) < sent
        assert received == list(range(len(received))), "what it got came in order"
        notices = [e["args"] for e in events if e.get("name") == "serverDisconnect"]
        assert notices == [[{"code": 3002, "reason": "slow", "reconnect": True}]]
    finally:
        await stalled.aclose()


async def test_shutdown_closes_with_3001_and_clients_reconnect(sio: SioDriver, uid: str) -> None:
    """A restarting node: 3001, transport close, and socket.io-client reconnects by itself."""
    room = f"room-{uid}"
    with serve_socketio() as first:
        port = first.port
        url = first.url + "/chat"
        socks = []
        for transport in ("websocket", "polling"):
            sock = await sio.open(
                url,
                auth={"token": token(f"ray-{transport}-{uid}")},
                transports=[transport],
                reconnection=True,
                reconnectionDelay=100,
                reconnectionDelayMax=200,
            )
            assert sock.connected
            await sock.ack("joinRoom", room)
            socks.append(sock)
        started = time.monotonic()
        await asyncio.to_thread(first.stop)
        assert time.monotonic() - started < 5, "a graceful stop waited on Socket.IO requests"
    websocket, polling = socks
    notice = await websocket.expect_event("serverDisconnect")
    assert notice == [{"code": 3001, "reason": "shutdown", "reconnect": True}]
    assert (await websocket.expect("disconnect"))["reason"] == "transport close"
    # A polling client gets the notice only if a long-poll was waiting when the node stopped
    # accepting connections, and cannot fetch the Engine.IO close after it: it sees a
    # transport error, on which socket.io-client reconnects as well.
    assert (await polling.expect("disconnect"))["reason"] in ("transport close", "transport error")
    with serve_socketio(port=port):  # the node comes back on the same address
        for sock in socks:
            await sock.expect("connect", within=10)
            assert (await sock.ack("joinRoom", room))["ok"]
        await socks[0].ack("message", {"roomId": room, "content": "back"})
        for sock in socks:
            assert (await sock.expect_event("newMessage"))[0]["content"] == "back"


@pytest.mark.parametrize("leave", [False, True], ids=["never-joined", "left-all"])
async def test_engineio_connection_without_namespace_is_closed(
    limited: KizunaProcess, leave: bool
) -> None:
    """As a native connection without a connect command (3007): no idle sockets nobody counts."""
    url = f"ws://127.0.0.1:{limited.port}/socket.io/?EIO=4&transport=websocket"
    async with connect(url, proxy=None, compression=None) as ws:
        assert str(await ws.recv()).startswith("0{")
        if leave:
            await ws.send("40/chat," + json.dumps({"token": token("lea")}))
            assert str(await ws.recv()).startswith("40/chat,")
            await ws.send("41/chat,")
        started = time.monotonic()
        frames = await asyncio.wait_for(closed_by_server(ws), CONNECT_TIMEOUT + 3)
        assert "1" in frames  # the Engine.IO close, sent by the server
        assert time.monotonic() - started >= CONNECT_TIMEOUT * 0.8


async def test_command_rate(limited: KizunaProcess, sio: SioDriver, uid: str) -> None:
    """The command-rate bucket every edge shares: 111 answers, then 4005 for a client that
    keeps going."""
    sock = await sio.open(
        limited.url + "/chat", auth={"token": token(f"rate-{uid}")}, transports=["websocket"]
    )
    answered = 0
    while (ack := await sock.ack("joinRoom", f"r{answered}-{uid}"))["ok"]:
        answered += 1
        assert answered <= COMMAND_BURST, "the burst was not enforced"
    assert ack["error"]["code"] == 111
    assert answered >= COMMAND_BURST - 2  # the connect took one token; time refilled little
    for n in range(COMMAND_BURST + 2):
        await sock.send("message", {"roomId": f"r0-{uid}", "content": f"spam {n}"})
    notice = await sock.expect_event("serverDisconnect")
    assert notice == [{"code": 4005, "reason": "too many requests", "reconnect": False}]
    assert (await sock.expect("disconnect"))["reason"] == "io server disconnect"


async def test_drop_oldest_namespace_sheds_instead_of_disconnecting(
    limited: KizunaProcess, uid: str, http: httpx.AsyncClient
) -> None:
    """In a drop-oldest namespace a member that falls behind loses old publications, keeps
    the connection, and gets the latest ones."""
    room = f"prices-{uid}"
    stalled = await SioDriver.start()
    try:
        sock = await stalled.open(
            limited.url + "/ticker", auth={"token": token(f"tick-{uid}")}, transports=["polling"]
        )
        assert (await sock.ack("joinRoom", room))["ok"]
        before = (await http.get(f"{limited.url}/metrics")).text
        os.kill(stalled.process.pid, signal.SIGSTOP)
        blob = "x" * 8000
        count = 3 * QUEUE_LIMIT // len(blob)
        try:
            for n in range(count):
                response = await http.post(
                    f"{limited.url}/api/publish",
                    json={"channel": f"ticker:{room}", "data": {"n": n, "blob": blob}},
                    headers={"Authorization": f"apikey {API_KEY}"},
                )
                assert response.status_code == 200, response.text
            after = (await http.get(f"{limited.url}/metrics")).text
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        name = "kizuna_messages_dropped_total"
        dropped = metric(after, name, transport="socketio") - metric(
            before, name, transport="socketio"
        )
        assert dropped > 0
        seen: list[int] = []
        while not seen or seen[-1] != count - 1:
            seen.append((await sock.expect_event("newMessage"))[0]["n"])
        assert seen == sorted(seen)
        assert len(seen) <= count - dropped  # what was shed never arrives
        assert (await sock.ack("leaveRoom", room))["ok"]  # and the connection is still up
        assert metric(after, "kizuna_slow_client_disconnects_total", transport="socketio") == (
            metric(before, "kizuna_slow_client_disconnects_total", transport="socketio")
        )
    finally:
        await stalled.aclose()
