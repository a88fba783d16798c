"""Packets socket.io-client would never send, written by hand on a raw WebSocket.

The functional tests use the real socket.io-client, which cannot produce a
malformed packet; a hostile or buggy peer can. A packet python-socketio cannot
parse closes that peer's connection (as socket.io's reference server does, and
as kizuna closes a native connection with 4001); a well-formed event with the
wrong arguments is answered with kizuna's code and the connection stays.
Either way the server keeps running and other clients notice nothing.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.socketio.clients import TIMEOUT, SioDriver, closed_by_server, token
from tests.support.processes import KizunaProcess


async def raw_chat_socket(server: KizunaProcess, user: str) -> ClientConnection:
    """Engine.IO v4 over WebSocket, connected to /chat, by hand."""
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    ws = await connect(url, proxy=None, compression=None, open_timeout=TIMEOUT)
    opened = await ws.recv()
    assert isinstance(opened, str) and opened.startswith("0{")
    await ws.send("40/chat," + json.dumps({"token": token(user)}))
    connected = await ws.recv()
    assert isinstance(connected, str) and connected.startswith('40/chat,{"sid"'), connected
    return ws


async def ack(ws: ClientConnection, ack_id: int) -> Any:
    """The data of the ACK packet with ``ack_id`` (answering pings, skipping events)."""
    prefix = f"43/chat,{ack_id}"
    while True:
        frame = await ws.recv()
        if frame == "2":  # Engine.IO ping
            await ws.send("3")
        elif isinstance(frame, str) and frame.startswith(prefix):
            return json.loads(frame[len(prefix) :])


JUNK = [
    "42/chat,[]",  # an event without a name
    '42/chat,{"not":"an array"}',
    '42/chat,["message"',  # truncated JSON
    "4",  # an empty Socket.IO packet
    "49/chat,[]",  # an unknown Socket.IO packet type
    '44/chat,"a client may not send CONNECT_ERROR"',
]


@pytest.mark.parametrize("junk", JUNK)
async def test_unparseable_packet_closes_only_that_connection(
    server: KizunaProcess, uid: str, http: httpx.AsyncClient, junk: str
) -> None:
    ws = await raw_chat_socket(server, f"raw-{uid}")
    bystander = await raw_chat_socket(server, f"by-{uid}")
    try:
        await ws.send(junk)
        frames = await closed_by_server(ws)
        assert "1" in frames, frames  # the Engine.IO close packet came before the socket closed
        await bystander.send(f'42/chat,1["joinRoom","room-{uid}"]')
        assert (await ack(bystander, 1))[0]["ok"] is True
    finally:
        await ws.close()
        await bystander.close()
    metrics = (await http.get(f"{server.url}/metrics")).text
    assert 'websocket_disconnections_total{code="4001",transport="socketio"}' in metrics


async def test_wrong_arguments_are_answered_and_the_connection_stays(
    server: KizunaProcess, sio: SioDriver, uid: str
) -> None:
    room = f"room-{uid}"
    ws = await raw_chat_socket(server, f"raw-{uid}")
    bystander = await sio.open(
        server.url + "/chat", auth={"token": token(f"by-{uid}")}, transports=["websocket"]
    )
    assert (await bystander.ack("joinRoom", room))["ok"]
    try:
        # Well-formed packets a peer may send without asking for an answer: ignored.
        for harmless in ["42/chat,[5]", '42/nope,["joinRoom","x"]', '43/chat,99["for nothing"]']:
            await ws.send(harmless)
        # An event name that is not a string: 104. Bytes where text belongs: 107.
        await ws.send('42/chat,1[7,"x"]')
        assert (await ack(ws, 1))[0]["error"]["code"] == 104
        await ws.send(
            '451-/chat,2["message",{"roomId":"r","content":{"_placeholder":true,"num":0}}]'
        )
        await ws.send(b"\x00\x01binary")
        assert (await ack(ws, 2))[0]["error"]["code"] == 107
        # Leaving the namespace and coming back is allowed, and the connection still works.
        await ws.send("41/chat,")
        await ws.send("40/chat," + json.dumps({"token": token(f"raw-{uid}")}))
        await ws.send(f'42/chat,3["joinRoom","{room}"]')
        assert (await ack(ws, 3))[0]["ok"] is True
        await ws.send(f'42/chat,4["message",{{"roomId":"{room}","content":"still fine"}}]')
        assert (await ack(ws, 4))[0]["ok"] is True
    finally:
        await ws.close()
    joined = await bystander.expect_event("userJoined", lambda a: a[0]["userId"] == f"raw-{uid}")
    assert joined == [{"userId": f"raw-{uid}", "room": room}]
    assert (await bystander.expect_event("newMessage"))[0]["content"] == "still fine"
    assert (await bystander.ack("message", {"roomId": room, "content": "me too"}))["ok"]
    assert (await bystander.expect_event("newMessage"))[0]["content"] == "me too"
