"""A node whose Redis is gone waits for it quietly: no busy loop, and SIGTERM still works.

A runaway during development (a reader loop that never awaited once the socket
was gone) spun a core and ignored SIGTERM; this pins the behaviour down.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from kizuna.core.auth import mint_token
from tests.support.processes import JWT_SECRET, KizunaProcess, RedisProcess


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


async def test_a_node_without_redis_idles_and_stops_on_sigterm() -> None:
    with RedisProcess() as redis, KizunaProcess(args=["--broker", redis.url]) as node:
        async with connect(node.ws_url) as ws:  # a live subscription: the reader is busy
            token = mint_token(JWT_SECRET, "idle")
            await ws.send(orjson.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
            await ws.recv()
            sub = {"channel": "chat:idle-outage"}
            await ws.send(orjson.dumps({"id": 2, "method": "subscribe", "params": sub}))
            await ws.recv()
            redis.kill()
            await asyncio.sleep(2)  # reconnect attempts begin, with backoff
            assert node.process is not None
            pid = node.process.pid
            before, started = _cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(3)
            used = _cpu_seconds(pid) - before
            assert used < 0.25 * (time.monotonic() - started), f"{used:.2f} s of CPU in 3 s"
            node.signal(signal.SIGTERM)
            assert await asyncio.to_thread(node.process.wait, 15) == 0
