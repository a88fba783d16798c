"""Hardening against a real server: slow handshakes, drain on SIGTERM, rate and IP limits.

Each attack runs while a probe client keeps working, and the probe's latency is
measured: the server must stay responsive to everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time

import httpx

from kizuna.protocol.codes import DisconnectCode
from tests.e2e.clients import RawWebSocket, token
from tests.e2e.conftest import OpenPy
from tests.support.processes import serve


async def _probe_latency(open_py: OpenPy, url: str, rounds: int = 20) -> float:
    """The worst ping round trip of a well-behaved client, in seconds."""
    probe = await open_py(url)
    await probe.connect(token("probe"))
    worst = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        assert await probe.call("ping") == {}
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return worst


async def test_slowloris_handshakes_are_cut_and_others_are_served(open_py: OpenPy) -> None:
    with serve("--handshake-timeout", "0.5") as server:
        sockets = []
        for _ in range(50):  # half-open handshakes: headers that never finish
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            sock.setblocking(False)
            sockets.append(sock)
        worst = await _probe_latency(open_py, server.ws_url)
        assert worst < 0.25, f"probe ping took {worst * 1000:.0f} ms during the attack"
        await asyncio.sleep(0.8)
        closed = 0
        for sock in sockets:
            with contextlib.suppress(BlockingIOError):  # still open: not counted
                closed += sock.recv(1) == b""
            sock.close()
        assert closed == 50  # every one was cut after the handshake timeout
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(server.url + "/metrics")).text
        assert 'kizuna_limit_refusals_total{limit="handshake_timeout"} 50.0' in metrics


async def test_sigterm_drains_with_advice_over_the_window_and_exits_zero(open_py: OpenPy) -> None:
    with serve("--drain-window", "1.0") as server:
        clients = []
        for i in range(8):
            client = await open_py(server.ws_url)
            await client.connect(token(f"drain-{i}"))
            clients.append(client)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        closes = await asyncio.gather(*(c.expect_close() for c in clients))
        spread = time.monotonic() - started
        assert server.process is not None
        assert server.process.wait(10) == 0
    assert {c.code for c in closes} == {DisconnectCode.SHUTDOWN}
    assert spread >= 0.6, f"all closed within {spread:.2f}s: no spreading"
    for client in clients:
        [advice] = [m for m in client.inbox if m.get("push") == "disconnect"]
        assert advice["code"] == DisconnectCode.SHUTDOWN
        assert advice["reconnect"] is True
        assert 0 <= advice["delay_ms"] <= 1000


async def test_command_flood_gets_111_then_4005_and_others_are_served(open_py: OpenPy) -> None:
    with serve("--command-rate", "50", "--command-burst", "20") as server:
        flooder = await open_py(server.ws_url)
        await flooder.connect(token("flooder"))
        frame = "\n".join(f'{{"id":{i},"method":"ping"}}' for i in range(2, 200))
        await flooder.send_raw(frame)
        closed = await flooder.expect_close()
        assert closed.code == DisconnectCode.TOO_MANY_REQUESTS
        codes = [m.get("error", {}).get("code") for m in flooder.inbox if "id" in m]
        assert codes.count(111) == 20  # refused up to the burst, then closed
        worst = await _probe_latency(open_py, server.ws_url)
        assert worst < 0.25


async def test_connections_per_ip_refused_with_3009(open_py: OpenPy) -> None:
    with serve("--max-connections-per-ip", "2") as server:
        first, second, third = [await open_py(server.ws_url) for _ in range(3)]
        await first.connect(token("ip-1"))
        await second.connect(token("ip-2"))
        await third.send({"id": 1, "method": "connect", "params": {"token": token("ip-3")}})
        closed = await third.expect_close()
        assert closed.code == DisconnectCode.CONNECTION_LIMIT
        assert await first.call("ping") == {}


async def _frames_until_closed(raw: RawWebSocket) -> list[tuple[int, bytes]]:
    frames, _ = await asyncio.to_thread(raw.read_until_eof, 5.0)
    return frames


def _close_code(frames: list[tuple[int, bytes]]) -> int | None:
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    return int.from_bytes(closes[0][:2], "big") if closes and len(closes[0]) >= 2 else None


async def test_invalid_utf8_and_fragmented_control_frames_are_refused(open_py: OpenPy) -> None:
    with serve() as server:
        bystander = await open_py(server.ws_url)
        await bystander.connect(token("bystander"))
        await bystander.call("subscribe", channel="chat:hostile")

        bad_text = RawWebSocket(server.port)
        bad_text.send_frame(0x81, b'{"id":1,"method":"ping","x":"\xff\xfe"}')  # not UTF-8
        assert _close_code(await _frames_until_closed(bad_text)) == 1007  # RFC 6455 §7.4.1
        bad_text.close()

        fragmented_ping = RawWebSocket(server.port)
        fragmented_ping.send_frame(0x09, b"part")  # a ping without FIN: forbidden (§5.5)
        assert _close_code(await _frames_until_closed(fragmented_ping)) == 1002
        fragmented_ping.close()

        async with httpx.AsyncClient() as http:
            r = await http.post(
                server.url + "/api/publish",
                json={"channel": "chat:hostile", "data": "still here"},
                headers={"Authorization": f"apikey {server.api_key}"},
            )
        assert r.status_code == 200
        assert [m["data"] for m in await bystander.publications("chat:hostile")] == ["still here"]


async def test_thousands_of_subscribe_cycles_leave_nothing_behind(open_py: OpenPy) -> None:
    with serve("--max-message-size", "1000000") as server:
        churner = await open_py(server.ws_url)
        await churner.connect(token("churner"))
        commands = []
        for i in range(1500):  # 3000 commands, in frames of 300
            channel = f"chat:cycle-{i % 50}"
            commands.append(
                f'{{"id":{2 * i + 2},"method":"subscribe","params":{{"channel":"{channel}"}}}}'
            )
            commands.append(
                f'{{"id":{2 * i + 3},"method":"unsubscribe","params":{{"channel":"{channel}"}}}}'
            )
        probe_task = asyncio.create_task(_probe_latency(open_py, server.ws_url, rounds=30))
        for start in range(0, len(commands), 300):
            await churner.send_raw("\n".join(commands[start : start + 300]))
        last = await churner.reply_to(3001, within=30)
        assert "result" in last
        worst = await probe_task
        assert worst < 0.5, f"probe ping took {worst * 1000:.0f} ms during the churn"
        errors = [m for m in churner.inbox if "error" in m]
        assert errors == []
        async with httpx.AsyncClient() as http:
            r = await http.post(
                server.url + "/api/channels",
                json={},
                headers={"Authorization": f"apikey {server.api_key}"},
            )
        assert r.json()["result"]["channels"] == {}  # every subscription was released


async def _answer(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read the answer until the server closes (or 2 s of quiet)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    chunks = b""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), 2):
            chunks += chunk
    writer.close()
    return chunks


async def test_request_heads_over_64_kib_get_431_and_others_are_served() -> None:
    pad = "".join(f"X-Pad-{i}: {'a' * 1000}\r\n" for i in range(70))  # ~70 KB of headers
    head = "GET /healthz HTTP/1.1\r\nHost: x\r\n"
    attacks = {
        "many headers": (head + pad + "\r\n").encode(),
        "one header that never ends": (head + "X-Long: " + "a" * 70_000).encode(),
        "a long target": f"GET /healthz?q={'a' * 70_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        "a WebSocket handshake": (
            "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\n" + pad + "\r\n"
        ).encode(),
    }
    with serve() as server:
        for name, raw in attacks.items():
            answer = await _answer(server.port, raw)
            assert answer.startswith(b"HTTP/1.1 431 "), (name, answer[:60])
            assert answer.endswith(b"The request head is over 65536 bytes.\n"), name
        # Just under the limit: served. A large body is no part of the head.
        under = "".join(f"X-Pad-{i}: {'a' * 1000}\r\n" for i in range(60))
        assert (await _answer(server.port, (head + under + "\r\n").encode())).startswith(
            b"HTTP/1.1 200 "
        )
        body = b"{" + b" " * 100_000 + b"}"
        post = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        assert (await _answer(server.port, post + body)).startswith(b"HTTP/1.1 405 ")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(server.url + "/metrics")).text
        assert 'kizuna_limit_refusals_total{limit="request_head"} 4.0' in metrics
