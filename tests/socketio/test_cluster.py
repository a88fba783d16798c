"""Two nodes on one Redis: Socket.IO rooms span nodes through kizuna's broker.

No python-socketio message queue is involved: each node subscribes to the
room's channel in kizuna's broker because it has a member there, and the
publication (or join) arrives on the other node like any other.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.socketio.clients import NativeClient, SioDriver, token
from tests.socketio.conftest import serve_socketio
from tests.support.processes import KizunaProcess, RedisProcess


@pytest.fixture(scope="module")
def nodes(redis_server: RedisProcess) -> Iterator[tuple[KizunaProcess, KizunaProcess]]:
    with (
        serve_socketio("--broker", redis_server.url) as one,
        serve_socketio("--broker", redis_server.url) as two,
    ):
        yield one, two


@pytest.mark.parametrize("transports", [("websocket", "polling"), ("polling", "websocket")])
async def test_room_spans_nodes(
    nodes: tuple[KizunaProcess, KizunaProcess],
    sio: SioDriver,
    uid: str,
    transports: tuple[str, str],
) -> None:
    one, two = nodes
    room = f"room-{uid}-{transports[0]}"
    here = await sio.open(
        one.url + "/chat", auth={"token": token(f"una-{uid}")}, transports=[transports[0]]
    )
    there = await sio.open(
        two.url + "/chat", auth={"token": token(f"dos-{uid}")}, transports=[transports[1]]
    )
    assert here.connected and there.connected
    assert (await here.ack("joinRoom", room))["ok"]
    assert (await there.ack("joinRoom", room))["ok"]
    # Node two's join reaches node one's member.
    assert await here.expect_event("userJoined", lambda a: a[0]["userId"] == f"dos-{uid}")

    sent = await here.ack("message", {"roomId": room, "content": "across nodes"})
    assert sent["ok"] is True
    data, meta = await there.expect_event("newMessage")
    assert data["content"] == "across nodes"
    assert data["userId"] == f"una-{uid}"
    assert meta == {"room": room, "offset": sent["offset"]}

    back = await there.ack("message", {"roomId": room, "content": "and back"})
    for sock in (here, there):
        contents = [
            (await sock.expect_event("newMessage"))[0]["content"]
            for _ in range(2 if sock is here else 1)
        ]
        assert contents[-1] == "and back", contents
    assert back["offset"] == sent["offset"] + 1


async def test_native_client_on_another_node(
    nodes: tuple[KizunaProcess, KizunaProcess], sio: SioDriver, uid: str
) -> None:
    one, two = nodes
    room = f"room-{uid}"
    native = await NativeClient.open(two.ws_url, token(f"nat-{uid}"))
    try:
        await native.call("subscribe", channel=f"chat:{room}")
        sock = await sio.open(
            one.url + "/chat", auth={"token": token(f"sio-{uid}")}, transports=["websocket"]
        )
        await sock.ack("joinRoom", room)
        await sock.ack("message", {"roomId": room, "content": "to the other node"})
        pub = await native.expect_push("pub", f"chat:{room}")
        assert pub["data"]["content"] == "to the other node"
        await native.call("publish", channel=f"chat:{room}", data={"content": "reply"})
        replies = [(await sock.expect_event("newMessage"))[0]["content"] for _ in range(2)]
        assert replies == ["to the other node", "reply"]
    finally:
        await native.aclose()
