"""The guide's Socket.IO chat, with the real socket.io-client over each transport.

Every test here talks to a real server process over TCP; the clients are the
npm ``socket.io-client`` (see tests/node/socketio/sio_client.mjs) and, for the
interop tests, kizuna's native protocol over Python ``websockets``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.socketio.clients import SioDriver, SioSocket, UpgradeRefusingProxy, token
from tests.socketio.conftest import OpenNative
from tests.support.processes import API_KEY, KizunaProcess


def chat_url(server: KizunaProcess | str, namespace: str = "/chat") -> str:
    base = server if isinstance(server, str) else server.url
    return base + namespace


async def open_user(
    sio: SioDriver, url: str, user: str, transports: list[str] | None = None, **opts: Any
) -> SioSocket:
    if transports is not None:
        opts["transports"] = transports
    sock = await sio.open(url, auth={"token": token(user)}, **opts)
    assert sock.connected, sock.first
    return sock


async def chat_between_two(sio: SioDriver, url: str, uid: str, transports: list[str]) -> None:
    """Alice and Bob join a room and talk; what both see is the guide's events, in order."""
    room = f"room-{uid}"
    alice = await open_user(sio, url, f"alice-{uid}", transports)
    bob = await open_user(sio, url, f"bob-{uid}", transports)

    joined = await alice.ack("joinRoom", room)
    assert joined["ok"] is True
    assert joined["room"] == room
    assert joined["channel"] == f"chat:{room}"
    assert await alice.expect_event("userJoined") == [{"userId": f"alice-{uid}", "room": room}]
    assert (await bob.ack("joinRoom", room))["ok"] is True
    for sock in (alice, bob):
        assert await sock.expect_event("userJoined", lambda a: a[0]["userId"] == f"bob-{uid}") == [
            {"userId": f"bob-{uid}", "room": room}
        ]

    before = int(time.time() * 1000)
    sent = await alice.ack("message", {"roomId": room, "content": "hello bob"})
    assert sent["ok"] is True
    assert sent["offset"] == 1
    for sock in (alice, bob):
        data, meta = await sock.expect_event("newMessage")
        assert data["userId"] == f"alice-{uid}"
        assert data["content"] == "hello bob"
        assert before - 1000 <= data["timestamp"] <= int(time.time() * 1000) + 1000
        assert meta == {"room": room, "offset": 1}

    # Ordering: several messages from one client arrive in the order it sent them.
    for n in range(5):
        await bob.send("message", {"roomId": room, "content": f"m{n}"})
    for sock in (alice, bob):
        got = [(await sock.expect_event("newMessage"))[0]["content"] for _ in range(5)]
        assert got == [f"m{n}" for n in range(5)]

    assert await bob.ack("leaveRoom", room) == {"ok": True, "room": room}
    assert await alice.expect_event("userLeft") == [{"userId": f"bob-{uid}", "room": room}]
    await alice.ack("message", {"roomId": room, "content": "bob is gone"})
    assert (await alice.expect_event("newMessage"))[0]["content"] == "bob is gone"
    late = [e for e in await sio.drain() if e["sock"] == bob.name and e["event"] == "message"]
    assert late == [], "a client that left the room still got its messages"
    for sock in (alice, bob):
        assert await sock.transport() == transports[0]


async def test_websocket_transport(server: KizunaProcess, sio: SioDriver, uid: str) -> None:
    await chat_between_two(sio, chat_url(server), uid, ["websocket"])


async def test_polling_transport(server: KizunaProcess, sio: SioDriver, uid: str) -> None:
    await chat_between_two(sio, chat_url(server), uid, ["polling"])


async def test_polling_upgrades_to_websocket(
    server: KizunaProcess, sio: SioDriver, uid: str
) -> None:
    """socket.io-client's default: open with polling, then upgrade; no message is lost."""
    room = f"room-{uid}"
    sock = await open_user(sio, chat_url(server), f"carol-{uid}")
    assert (await sock.expect("engine_open"))["transport"] == "polling"
    await sock.ack("joinRoom", room)
    await sock.expect("upgrade")
    assert await sock.transport() == "websocket"
    for n in range(3):
        assert (await sock.ack("message", {"roomId": room, "content": f"m{n}"}))["ok"]
    got = [(await sock.expect_event("newMessage"))[0]["content"] for _ in range(3)]
    assert got == ["m0", "m1", "m2"]


async def test_fallback_to_polling_when_websocket_is_refused(
    server: KizunaProcess, sio: SioDriver, uid: str
) -> None:
    """The guide's ``transports: ['websocket', 'polling']`` behind a proxy that refuses upgrades."""
    proxy = await UpgradeRefusingProxy(server.port).start()
    try:
        url = chat_url(f"http://127.0.0.1:{proxy.port}")
        room = f"room-{uid}"
        sock = await open_user(
            sio, url, f"dave-{uid}", ["websocket", "polling"], tryAllTransports=True
        )
        assert proxy.refused >= 1, "the websocket attempt never reached the proxy"
        assert sock.first["transport"] == "polling"
        # The default order (polling first) tries to upgrade, is refused, and keeps polling.
        refused_before = proxy.refused
        other = await open_user(sio, url, f"erin-{uid}")
        for s in (sock, other):
            assert (await s.ack("joinRoom", room))["ok"]
        await sock.ack("message", {"roomId": room, "content": "over polling"})
        for s in (sock, other):
            assert (await s.expect_event("newMessage"))[0]["content"] == "over polling"
            assert await s.transport() == "polling"
        assert proxy.refused > refused_before, "socket.io-client never tried to upgrade"
        assert proxy.forwarded > 0
    finally:
        await proxy.aclose()


async def test_native_and_socketio_clients_share_a_room(
    server: KizunaProcess,
    sio: SioDriver,
    uid: str,
    open_native: OpenNative,
    http: httpx.AsyncClient,
) -> None:
    """A room is channel ``chat:<room>``: native subscribers and Socket.IO members meet there."""
    room = f"room-{uid}"
    channel = f"chat:{room}"
    native = await open_native(server.ws_url, token(f"nat-{uid}"))
    await native.call("subscribe", channel=channel)
    sock = await open_user(sio, chat_url(server), f"sio-{uid}", ["websocket"])
    await sock.ack("joinRoom", room)

    # The Socket.IO member's join is the node's join event: native clients see it too.
    join = await native.expect(
        lambda m: m.get("push") == "join" and m["info"]["user"] == f"sio-{uid}"
    )
    assert join["channel"] == channel

    # Socket.IO → native: the publication's data is {userId, content, timestamp}.
    await sock.ack("message", {"roomId": room, "content": "from socket.io"})
    pub = await native.expect_push("pub", channel)
    assert pub["data"]["userId"] == f"sio-{uid}"
    assert pub["data"]["content"] == "from socket.io"
    assert isinstance(pub["data"]["timestamp"], int)
    assert pub["info"]["user"] == f"sio-{uid}"
    await sock.expect_event("newMessage")  # its own message, consumed

    # native → Socket.IO: any JSON payload arrives as newMessage's first argument.
    result = await native.call("publish", channel=channel, data={"text": "from native", "n": 2})
    data, meta = await sock.expect_event("newMessage")
    assert data == {"text": "from native", "n": 2}
    assert meta == {"room": room, "offset": result["offset"]}
    # The server API reaches Socket.IO members as well.
    response = await http.post(
        f"{server.url}/api/publish",
        json={"channel": channel, "data": {"content": "from the API"}},
        headers={"Authorization": f"apikey {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    assert (await sock.expect_event("newMessage"))[0] == {"content": "from the API"}
    # And the native client's own join/leave reach Socket.IO members as userJoined/userLeft.
    await native.call("unsubscribe", channel=channel)
    assert await sock.expect_event("userLeft") == [{"userId": f"nat-{uid}", "room": room}]


async def test_notifications_namespace(
    server: KizunaProcess, sio: SioDriver, uid: str, http: httpx.AsyncClient
) -> None:
    """``/notifications`` is kizuna's ``notifications`` namespace: server-published only."""
    room = f"user-{uid}"
    sock = await open_user(sio, chat_url(server, "/notifications"), f"nina-{uid}", ["websocket"])
    joined = await sock.ack("joinRoom", room)
    assert joined["ok"] is True
    assert joined["channel"] == f"notifications:{room}"
    refused = await sock.ack("message", {"roomId": room, "content": "clients may not"})
    assert refused["ok"] is False
    assert refused["error"]["code"] == 103
    response = await http.post(
        f"{server.url}/api/publish",
        json={"channel": f"notifications:{room}", "data": {"alert": "disk full"}},
        headers={"Authorization": f"apikey {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    data, meta = await sock.expect_event("newMessage")
    assert data == {"alert": "disk full"}
    assert meta["room"] == room


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_connections_are_kizuna_clients(
    server: KizunaProcess, sio: SioDriver, uid: str, http: httpx.AsyncClient, transport: str
) -> None:
    """Each namespace connection is registered on the node: metrics and presence count it."""
    room = f"room-{uid}"
    sock = await open_user(sio, chat_url(server), f"pam-{uid}", [transport])
    await sock.ack("joinRoom", room)
    response = await http.post(
        f"{server.url}/api/presence",
        json={"channel": f"chat:{room}"},
        headers={"Authorization": f"apikey {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    users = [c["user"] for c in response.json()["result"]["clients"].values()]
    assert users == [f"pam-{uid}"]
    metrics = (await http.get(f"{server.url}/metrics")).text
    active = [
        line
        for line in metrics.splitlines()
        if line.startswith("websocket_active_connections{")
        and 'transport="socketio"' in line
        and 'namespace="/chat"' in line
    ]
    assert active, metrics
    assert float(active[0].rsplit(" ", 1)[1]) >= 1
