"""Soak: connection churn plus steady traffic against one ``kizuna serve``, then check for leaks.

    .venv/bin/python -m bench.soak --seconds 600          # the full 10-minute soak
    .venv/bin/python -m bench.soak --seconds 20 --churn 20 # a short one (tests/e2e/test_soak.py)

While steady subscribers receive a steady publication stream, short-lived
clients connect, subscribe to a few channels, read for a moment and leave —
some politely, some by dropping the TCP connection. The server must:

1. deliver every publication to every steady subscriber, once, in order;
2. after the warm-up (the first ``warmup`` fraction of the run), keep its RSS
   within 5 % of the level it had then (no growth with churn);
3. once every client has gone, hold exactly as many file descriptors as it
   did before the first client came.

Bounded by construction: every loop stops at the deadline, every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["SoakResult", "fd_count", "rss_kb", "soak"]

CHANNELS = [f"chat:soak-{i}" for i in range(5)]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class SoakResult:
    seconds: float
    churned: int = 0
    published: int = 0
    received: dict[str, int] = field(default_factory=dict)
    out_of_order: int = 0
    fds_before: int = 0
    fds_after: int = 0
    rss_warm_kb: int = 0
    rss_end_kb: int = 0
    rss_peak_kb: int = 0

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kb - self.rss_warm_kb) / self.rss_warm_kb

    @property
    def lost(self) -> int:
        return sum(self.published - n for n in self.received.values())


async def _open(url: str, token: str) -> ClientConnection:
    ws = await connect(url, max_queue=None)
    await ws.send(orjson.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
    await asyncio.wait_for(ws.recv(), 10)
    return ws


async def _steady(url: str, token: str, channel: str, name: str, result: SoakResult) -> None:
    """Subscribe and count publications until the connection is closed by the soak."""
    ws = await _open(url, token)
    await ws.send(orjson.dumps({"id": 2, "method": "subscribe", "params": {"channel": channel}}))
    last = 0
    result.received[name] = 0
    try:
        async for frame in ws:
            for line in str(frame).split("\n"):
                message = orjson.loads(line)
                if message.get("push") == "pub":
                    offset = message["offset"]
                    if offset != last + 1:
                        result.out_of_order += 1
                    last = offset
                    result.received[name] += 1
    except ConnectionClosed:
        return
    finally:
        ws.transport.abort()  # cancelled at the end of the soak: let go of the socket now


async def _churner(
    url: str, token: str, deadline: float, rng: random.Random, result: SoakResult
) -> None:
    """Clients that come and go until the deadline."""
    while time.monotonic() < deadline:
        try:
            ws = await _open(url, token)
            for i, channel in enumerate(rng.sample(CHANNELS, 2)):
                sub = {"id": 10 + i, "method": "subscribe", "params": {"channel": channel}}
                await ws.send(orjson.dumps(sub))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.uniform(0.05, 0.4)):
                    async for _ in ws:
                        pass
            if rng.random() < 0.3:
                ws.transport.abort()  # a client that vanishes without a close frame
            else:
                await ws.close()
            result.churned += 1
        except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
            await asyncio.sleep(0.05)


async def soak(
    url: str,
    pid: int,
    token: str,
    *,
    seconds: float,
    churners: int = 10,
    rate: float = 50.0,
    publish: object | None = None,
    warmup: float = 0.3,
) -> SoakResult:
    """Run the soak against a server whose process is ``pid``; ``publish(channel, data)``
    publishes through the server API (blocking is fine: it runs in a thread)."""
    assert callable(publish)
    result = SoakResult(seconds=seconds)
    result.fds_before = fd_count(pid)
    rng = random.Random(1)
    steady = [
        asyncio.create_task(_steady(url, token, CHANNELS[0], f"steady-{i}", result))
        for i in range(10)
    ]
    await asyncio.sleep(1.0)  # the steady subscribers are in
    start = time.monotonic()
    deadline = start + seconds
    churn = [
        asyncio.create_task(_churner(url, token, deadline, random.Random(rng.random()), result))
        for _ in range(churners)
    ]

    async def sample_memory() -> None:
        warm_at = start + warmup * seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            rss = rss_kb(pid)
            result.rss_peak_kb = max(result.rss_peak_kb, rss)
            if not result.rss_warm_kb and time.monotonic() >= warm_at:
                result.rss_warm_kb = rss

    sampler = asyncio.create_task(sample_memory())
    interval = 1.0 / rate
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.to_thread(publish, CHANNELS[0], {"n": result.published})
        result.published += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*churn, sampler)
    await asyncio.sleep(1.0)  # the last publications reach the steady subscribers
    for task in steady:
        task.cancel()
    await asyncio.gather(*steady, return_exceptions=True)
    settle_until = time.monotonic() + 10
    # Polling /proc is the only way to watch another process's descriptors.
    while fd_count(pid) > result.fds_before and time.monotonic() < settle_until:  # noqa: ASYNC110
        await asyncio.sleep(0.2)  # closes and aborts take a moment to reach the server
    result.fds_after = fd_count(pid)
    result.rss_end_kb = rss_kb(pid)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--churn", type=int, default=20, help="concurrent churning clients")
    parser.add_argument("--rate", type=float, default=50, help="publications per second")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kizuna.core.auth import mint_token
    from tests.support.processes import JWT_SECRET, KizunaProcess

    with KizunaProcess() as server:
        assert server.process is not None
        token = mint_token(JWT_SECRET, "soak", ttl=args.seconds + 600)

        def publish(channel: str, data: object) -> None:
            server.api("publish", channel=channel, data=data).raise_for_status()

        result = asyncio.run(
            soak(
                server.ws_url,
                server.process.pid,
                token,
                seconds=args.seconds,
                churners=args.churn,
                rate=args.rate,
                publish=publish,
            )
        )
    report = {**asdict(result), "rss_growth": round(result.rss_growth, 4), "lost": result.lost}
    print(json.dumps(report, indent=2))
    ok = (
        result.lost == 0
        and result.out_of_order == 0
        and abs(result.rss_growth) <= 0.05
        and result.fds_after == result.fds_before
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
