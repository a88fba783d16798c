"""SSE's synchronous write path: taken under uvicorn, same stream as the ASGI path.

The server runs in the test's loop (tests/support/inprocess.py), so the test can
see which path each stream's transport takes; the reader is httpx.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from kizuna.core.auth import mint_token
from kizuna.protocol.cursor import decode_cursor
from kizuna.protocol.messages import StreamPosition
from kizuna.server import Server
from kizuna.transports.sse import SSETransport, _LineCache
from tests.support.inprocess import serving
from tests.support.processes import JWT_SECRET
from tests.transports.sse_reader import events


def sse_transports(server: Server) -> list[SSETransport]:
    return [
        c.transport for c in server.node.clients.values() if isinstance(c.transport, SSETransport)
    ]


async def read_pubs(response: httpx.Response, count: int) -> list[tuple[str, Any]]:
    got: list[tuple[str, Any]] = []
    async for event in events(response):
        if event.event == "pub":
            assert event.id is not None
            got.append((event.id, event.data))
            if len(got) == count:
                return got
    raise AssertionError(f"the stream ended after {len(got)} of {count} publications")


async def test_publications_take_the_synchronous_path_and_keep_their_cursor() -> None:
    async with (
        serving() as (server, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as http,
    ):
        token = mint_token(JWT_SECRET, "reader")
        url = f"/connection/sse?channels=chat:fast&token={token}"
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            for _ in range(100):
                if sse_transports(server):
                    break
                await asyncio.sleep(0.02)
            [transport] = sse_transports(server)
            taken = 0
            write_nowait = transport.write_nowait

            def counting(frame: bytes) -> bool:
                nonlocal taken
                written = write_nowait(frame)
                taken += written
                return written

            client = next(c for c in server.node.clients.values() if c.transport is transport)
            client._write_nowait = counting  # what Client.flush_now calls (a slot)
            for n in range(5):
                await server.node.publish("chat:fast", orjson.dumps({"n": n}))
            pubs = await asyncio.wait_for(read_pubs(response, 5), 10)
    assert taken >= 1, "no frame went through write_nowait"
    assert [data["data"] for _, data in pubs] == [{"n": n} for n in range(5)]
    offsets = [decode_cursor(cursor)["chat:fast"].offset for cursor, _ in pubs]
    assert offsets == [data["offset"] for _, data in pubs] == sorted(offsets)


def test_a_shared_line_is_decoded_once_for_every_stream() -> None:
    line = orjson.dumps({"push": "pub", "channel": "live:x", "data": {"n": 1}})
    streams = [SSETransport(None) for _ in range(3)]
    events = [stream._events(line) for stream in streams]
    assert events[0] == b"event: pub\ndata: " + line + b"\n\n"
    assert events[1] is events[0] and events[2] is events[0]  # built once, shared


def test_cursor_events_stay_per_stream() -> None:
    a, b = SSETransport(None), SSETransport(None)
    other = orjson.dumps({"push": "position", "channel": "chat:b", "offset": 7, "epoch": "e"})
    assert b._events(other) == b""  # a position line moves the cursor, says nothing
    pub = orjson.dumps({"push": "pub", "channel": "chat:a", "offset": 3, "epoch": "e", "data": 1})
    [id_a] = [f for f in a._events(pub).split(b"\n") if f.startswith(b"id: ")]
    [id_b] = [f for f in b._events(pub).split(b"\n") if f.startswith(b"id: ")]
    assert decode_cursor(id_a[4:].decode()) == {"chat:a": StreamPosition(3, "e")}
    assert decode_cursor(id_b[4:].decode()) == {
        "chat:b": StreamPosition(7, "e"),
        "chat:a": StreamPosition(3, "e"),
    }


def test_the_line_cache_starts_afresh_past_its_budget() -> None:
    cache = _LineCache(budget=100)
    first = orjson.dumps({"push": "pub", "channel": "live:x", "data": "a" * 40})
    second = orjson.dumps({"push": "pub", "channel": "live:x", "data": "b" * 40})
    assert len(first) + len(second) > 100
    assert cache.get(first) is cache.get(first)  # held
    cache.get(second)  # over budget: everything before it is let go
    assert first not in cache._lines and second in cache._lines


def test_the_chunk_of_a_cursorless_frame_is_shared_and_a_cursor_frame_is_not() -> None:
    pub = orjson.dumps({"push": "pub", "channel": "live:x", "data": 2})
    bye = orjson.dumps({"push": "disconnect", "code": 3001, "reason": "x", "reconnect": True})
    cursor = orjson.dumps(
        {"push": "pub", "channel": "chat:c", "offset": 1, "epoch": "e", "data": 3}
    )
    written: list[bytes] = []
    streams = [_stream(written) for _ in range(2)]
    for stream in streams:
        assert stream.write_nowait(pub + b"\n" + bye)
    assert written[0] is written[1]  # built once for both streams
    assert all(stream._said_goodbye for stream in streams)  # each knows it said goodbye
    written.clear()
    for stream in streams:
        stream.positions["chat:other"] = StreamPosition(len(written) + 5, "e")
        assert stream.write_nowait(cursor)
    assert written[0] != written[1]  # each stream's cursor is its own


class _Cycle:
    """What write_nowait reads of uvicorn's request-response cycle, recording the writes."""

    def __init__(self, written: list[bytes]) -> None:
        self.transport = self
        self.flow = self
        self.write_paused = False
        self.chunked_encoding = True
        self.response_complete = False
        self.disconnected = False
        self._written = written

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self._written.append(data)

    async def send(self, message: object) -> None:  # the raw send whose __self__ is the cycle
        raise AssertionError("write_nowait must not go through send")


def _stream(written: list[bytes]) -> SSETransport:
    return SSETransport(None, _Cycle(written).send)
