"""Keepalive of detached WebSockets on the node's deadline timer, on asyncio's loop and uvloop.

kizuna serve runs on uvloop, whose TimerHandle is not asyncio's: each test runs on
both loops. The e2e suite checks the same against a `kizuna serve` process
(tests/e2e/test_lifecycle.py); here the protocol objects can be looked at.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct

import pytest
import uvloop
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from kizuna.core.auth import mint_token
from kizuna.server import Server
from kizuna.transports.websocket_protocol import DetachableWebSocketProtocol
from tests.e2e.clients import RawWebSocket
from tests.support.inprocess import serving, until_no_clients
from tests.support.processes import JWT_SECRET
from tests.transports.test_websocket_detached import command, connected

PING, PONG, CLOSE = 0x9, 0xA, 0x8


LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
"""Each test's body runs on both (sync tests: the loop is the test's choice, not the plugin's)."""


def protocols(server: Server) -> list[DetachableWebSocketProtocol]:
    found = [c.transport.protocol for c in server.node.clients.values()]
    assert all(isinstance(p, DetachableWebSocketProtocol) for p in found)
    return found  # type: ignore[return-value]


def own_timers(protocol: DetachableWebSocketProtocol) -> list[object]:
    """uvicorn's own ping and pong timers, where they are real timers (not the node's)."""
    timers = (protocol.ping_timer, protocol.pong_timer)
    return [t for t in timers if type(t).__name__ == "TimerHandle"]


@pytest.mark.parametrize("loop", LOOPS)
def test_pings_and_pongs_run_on_the_nodes_timer(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pong_deadlines: list[str] = []
    send_ping = DetachableWebSocketProtocol.send_keepalive_ping

    def noting(self: DetachableWebSocketProtocol) -> None:
        send_ping(self)
        pong_deadlines.append(type(self.pong_timer).__name__)  # what waits for the pong

    monkeypatch.setattr(DetachableWebSocketProtocol, "send_keepalive_ping", noting)
    LOOPS[loop](pings_and_pongs())
    assert len(pong_deadlines) >= 10 and set(pong_deadlines) == {"_PongDeadline"}


async def pings_and_pongs() -> None:
    async with serving(ping_interval=0.3, ping_timeout=0.3) as (server, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        sockets = [await connected(url, f"pinged{i}") for i in range(5)]
        pings_sent: dict[int, set[float]] = {}
        clock = asyncio.get_running_loop()
        until = clock.time() + 2.0  # several rounds; the clients answer pings by themselves
        while clock.time() < until:
            for protocol in protocols(server):
                assert own_timers(protocol) == []
                pings_sent.setdefault(id(protocol), set()).add(protocol.ping_sent_at)
            await asyncio.sleep(0.005)
        # A next ping goes out only after the pong came back (else: 1011, and no reply below).
        assert all(len(sent - {0.0}) >= 2 for sent in pings_sent.values()), pings_sent
        assert [(await command(ws, 2, "ping"))["id"] for ws in sockets] == [2] * 5
        for ws in sockets:
            await ws.close()
        await until_no_clients(server)
        assert len(server.node.deadlines) == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_that_never_answers_pings_is_closed_with_1011(loop: str) -> None:
    LOOPS[loop](mute_peer_closed())


async def mute_peer_closed() -> None:
    async with serving(ping_interval=0.3, ping_timeout=0.3) as (server, port):

        def mute_peer() -> list[tuple[int, bytes]]:
            raw = RawWebSocket(port)
            try:
                params = {"token": mint_token(JWT_SECRET, "mute")}
                raw.send_text(json.dumps({"id": 1, "method": "connect", "params": params}))
                frames, _ = raw.read_until_eof(within=5)
                return frames
            finally:
                raw.close()

        frames = await asyncio.to_thread(mute_peer)
        opcodes = [opcode for opcode, _ in frames]
        assert PING in opcodes and PONG not in opcodes
        assert opcodes[-1] == CLOSE
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1011
        await until_no_clients(server)
        assert len(server.node.deadlines) == 0


@pytest.mark.parametrize("loop", LOOPS)
def test_an_accepted_connection_never_starts_a_timer_of_its_own(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accept_now puts the first ping on the node's timer at once: no call_later to undo."""
    own: list[str] = []
    original = WebSocketsSansIOProtocol.schedule_ping

    def noting(self: WebSocketsSansIOProtocol) -> None:
        own.append(type(self).__name__)
        original(self)

    monkeypatch.setattr(WebSocketsSansIOProtocol, "schedule_ping", noting)
    LOOPS[loop](accepted_without_timers())
    assert own == []


async def accepted_without_timers() -> None:
    async with serving(ping_interval=0.3) as (server, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        sockets = [await connected(url, f"quiet{i}") for i in range(3)]
        assert len(server.node.deadlines) == 6  # each: its keepalive step, its token's expiry
        await asyncio.sleep(0.8)  # pings went out and came back
        assert all(p.ping_sent_at > 0 for p in protocols(server))
        for ws in sockets:
            await ws.close()
        await until_no_clients(server)


def test_accept_now_sends_nothing_once_the_peer_is_gone() -> None:
    written: list[bytes] = []
    protocol = DetachableWebSocketProtocol.__new__(DetachableWebSocketProtocol)
    protocol.disconnected = True
    protocol.handshake_complete = False
    protocol.initial_response = None
    protocol.transport = type("T", (), {"write": written.append, "is_closing": lambda _: True})()  # type: ignore[assignment]
    assert protocol.accept_now() is False
    assert written == []


async def test_the_access_log_line_of_an_accept_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    async with serving() as (server, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket?x=1"
        with caplog.at_level(logging.INFO, logger="uvicorn.error"):
            ws = await connected(url, "logged")
        await ws.close()
        await until_no_clients(server)
    lines = [r.getMessage() for r in caplog.records if "[accepted]" in r.getMessage()]
    port = ws.local_address[1]
    assert lines == [f'127.0.0.1:{port} - "WebSocket /connection/websocket?x=1" [accepted]']
