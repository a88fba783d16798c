"""Wrong payloads get an error acknowledgement with kizuna's code; nothing else changes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.socketio.clients import SioDriver, token
from tests.support.processes import KizunaProcess

BAD_EVENTS: list[tuple[str, list[Any], int]] = [
    ("message", [42], 107),
    ("message", ["just text"], 107),
    ("message", [], 107),
    ("message", [{"roomId": 7, "content": "x"}], 107),
    ("message", [{"roomId": "", "content": "x"}], 107),
    ("message", [{"roomId": "r", "content": {"nested": True}}], 107),
    ("message", [{"roomId": "r" * 300, "content": "x"}], 107),
    ("message", [{"content": "no room"}], 107),
    ("joinRoom", [{"roomId": "r"}], 107),
    ("joinRoom", [], 107),
    ("joinRoom", [None], 107),
    ("joinRoom", ["a", "b"], 107),
    ("leaveRoom", [5], 107),
    ("leaveRoom", ["never-joined"], 110),
    ("noSuchEvent", ["x"], 104),
]
"""(event, arguments, the error code its acknowledgement must carry)"""


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_wrong_payloads_get_error_acks(
    server: KizunaProcess, sio: SioDriver, uid: str, transport: str
) -> None:
    room = f"room-{uid}"
    url = server.url + "/chat"
    bad = await sio.open(url, auth={"token": token(f"bad-{uid}")}, transports=[transport])
    good = await sio.open(url, auth={"token": token(f"good-{uid}")}, transports=[transport])
    assert bad.connected and good.connected
    for sock in (bad, good):
        assert (await sock.ack("joinRoom", room))["ok"] is True

    for event, args, code in BAD_EVENTS:
        ack = await bad.ack(event, *args)
        assert ack["ok"] is False, (event, args, ack)
        assert ack["error"]["code"] == code, (event, args, ack)
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    again = await bad.ack("joinRoom", room)
    assert again["error"]["code"] == 105  # already in the room
    # Without an ack callback a bad event is answered with nothing, and breaks nothing.
    await bad.send("message", 42)

    # The connection that sent all that is still up and still works.
    assert (await bad.ack("message", {"roomId": room, "content": "still here"}))["ok"] is True
    # Both clients saw the joins and the one good message, nothing else; neither was closed.
    drained = await sio.drain()
    for sock in (bad, good):
        events = [e for e in drained if e["sock"] == sock.name]
        messages = [e["args"][0]["content"] for e in events if e.get("name") == "newMessage"]
        assert messages == ["still here"], sock.name
        assert not [e for e in events if e["event"] in ("disconnect", "connect_error")]
    assert (await good.ack("message", {"roomId": room, "content": "me too"}))["ok"] is True
    assert (await bad.expect_event("newMessage"))[0]["content"] == "me too"
