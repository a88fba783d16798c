"""A connection's life end to end: heartbeats, the connect deadline, server shutdown.

These need short timers, so they run against their own server
(``--ping-interval 0.5 --ping-timeout 0.5 --connect-timeout 0.5``); a
well-behaved client connected alongside shows that only the misbehaving peer
is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from kizuna.protocol.codes import DisconnectCode
from tests.e2e.clients import Api, RawWebSocket, token
from tests.e2e.conftest import OpenPy
from tests.support.processes import KizunaProcess, serve

PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.5
BOUND = 5.0
"""Generous upper bound, in seconds, for the server to act on a timer (a loaded CI machine)."""

PING_FRAME, CLOSE_FRAME = 0x9, 0x8


@pytest.fixture(scope="module")
def timers_server() -> Iterator[KizunaProcess]:
    with serve(
        "--ping-interval",
        str(PING_INTERVAL),
        "--ping-timeout",
        str(PING_TIMEOUT),
        "--connect-timeout",
        str(CONNECT_TIMEOUT),
    ) as process:
        yield process


async def test_peer_that_stops_answering_pings_is_closed(
    timers_server: KizunaProcess, open_py: OpenPy, uid: str
):
    # A polite client (websockets answers pings by itself) lives through the same windows.
    polite = await open_py(timers_server.ws_url)
    await polite.connect(token(f"polite-{uid}"))

    def silent_peer() -> tuple[list[tuple[int, bytes]], float]:
        raw = RawWebSocket(timers_server.port)
        try:
            raw.send_text(
                f'{{"id": 1, "method": "connect", "params": {{"token": "{token(f"mute-{uid}")}"}}}}'
            )
            return raw.read_until_eof(within=BOUND)  # reads, but never answers a ping
        finally:
            raw.close()

    frames, elapsed = await asyncio.to_thread(silent_peer)
    opcodes = [opcode for opcode, _ in frames]
    assert PING_FRAME in opcodes, "the server closed the peer without pinging it first"
    assert elapsed < BOUND, f"still open after {elapsed:.1f}s"
    assert elapsed >= PING_INTERVAL  # it was the heartbeat, not something immediate
    assert opcodes[-1] == CLOSE_FRAME
    close_code = int.from_bytes(frames[-1][1][:2], "big")
    assert close_code == 1011  # keepalive ping timeout (docs/protocol.md §11)
    assert await polite.call("ping") == {}


async def test_connect_timeout_closes_with_3007(
    timers_server: KizunaProcess, open_py: OpenPy, uid: str
):
    polite = await open_py(timers_server.ws_url)
    await polite.connect(token(f"quick-{uid}"))
    silent = await open_py(timers_server.ws_url)
    started = time.monotonic()
    closed = await silent.expect_close(within=BOUND)
    assert closed.code == DisconnectCode.CONNECT_TIMEOUT
    assert time.monotonic() - started >= CONNECT_TIMEOUT * 0.8
    # The client that connected in time is past the same deadline and still served.
    assert await polite.call("ping") == {}


async def test_sigterm_closes_clients_with_3001_shutdown(
    http: httpx.AsyncClient, open_py: OpenPy, uid: str
):
    """Stopping the server must tell clients "shutdown, reconnect elsewhere" (3001)."""
    with serve() as process:
        client = await open_py(process.ws_url)
        await client.connect(token(f"bye-{uid}"))
        channel = f"chat:bye-{uid}"
        await client.call("subscribe", channel=channel)
        await Api(http, process).publish(channel, "last words")
    closed = await client.expect_close()
    assert [m["data"] for m in client.inbox if m.get("push") == "pub"] == ["last words"]
    assert closed.code == DisconnectCode.SHUTDOWN
