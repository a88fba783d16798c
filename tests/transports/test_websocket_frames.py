"""Text frames the native WebSocket writes itself: each length framed as ``websockets`` frames it.

The fan-out and the replies write frames without the ``websockets`` protocol object
(transports/websocket.py, ``write_nowait``), with the header ``websockets`` made for a
payload of that length, kept per length. A header wrong for one length class (7-bit,
16-bit, 64-bit length field) would break the stream for every client from there on.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from websockets.frames import Frame, Opcode

from kizuna.core.auth import mint_token
from kizuna.transports.websocket import _text_header
from tests.support.inprocess import serving
from tests.support.processes import JWT_SECRET

# Around each boundary of the length field (RFC 6455 §5.2): 125 | 126, 65535 | 65536.
LENGTHS = [0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537, 1 << 20]


@pytest.mark.parametrize("length", LENGTHS)
def test_the_header_is_the_one_websockets_writes(length: int) -> None:
    payload = b"x" * length
    assert _text_header(length) + payload == Frame(Opcode.TEXT, payload).serialize(mask=False)


async def test_frames_of_every_length_class_reach_a_client_intact() -> None:
    """Pushes and replies from 100 to 300 bytes, one byte apart, and one of 60 KB."""
    async with serving() as (_server, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        subscriber = await websockets.connect(url, compression=None, max_queue=None)
        publisher = await websockets.connect(url, compression=None, max_queue=None)
        for n, ws in enumerate((subscriber, publisher)):
            token = mint_token(JWT_SECRET, f"u{n}")
            connect = {"id": 1, "method": "connect", "params": {"token": token}}
            await ws.send(orjson.dumps(connect).decode())
        await subscriber.send('{"id":2,"method":"subscribe","params":{"channel":"chat:len"}}')
        for ws, last in ((subscriber, '"id":2'), (publisher, '"id":1')):
            while last not in str(await asyncio.wait_for(ws.recv(), 5)):
                pass
        sizes = [*range(100, 301), 60_000]
        for cid, size in enumerate(sizes, start=10):
            params = {"channel": "chat:len", "data": "d" * size}
            await publisher.send(
                orjson.dumps({"id": cid, "method": "publish", "params": params}).decode()
            )
        received: list[int] = []
        replies: list[int] = []
        while len(received) < len(sizes) or len(replies) < len(sizes):
            if len(received) < len(sizes):
                for line in str(await asyncio.wait_for(subscriber.recv(), 5)).splitlines():
                    push = orjson.loads(line)
                    if push.get("push") == "pub":
                        received.append(len(push["data"]))
            if len(replies) < len(sizes):
                for line in str(await asyncio.wait_for(publisher.recv(), 5)).splitlines():
                    reply = orjson.loads(line)
                    assert "error" not in reply, reply
                    replies.append(reply["id"])
        assert received == sizes
        assert replies == list(range(10, 10 + len(sizes)))
        await subscriber.close()
        await publisher.close()
