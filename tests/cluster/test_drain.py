"""SIGTERM under load: a draining node's clients move to another node and lose nothing.

Twenty clients (kizuna's Python client, knowing both nodes) subscribe on node A
while a publisher on node B publishes without pause. A is stopped with SIGTERM:
it advises a delay, closes its clients over the drain window and exits 0; each
client reconnects to B, recovers from Redis, and ends with every acknowledged
publication exactly once, in order.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from kizuna.client import Backoff, Client, Publication, Subscribed
from kizuna.core.auth import mint_token
from tests.support.processes import JWT_SECRET, KizunaProcess, RedisProcess, write_config

CLIENTS = 20


async def _follow(client: Client, channel: str, seen: list[int], ready: asyncio.Event) -> None:
    sub = await client.subscribe(channel)
    async for event in sub:
        if isinstance(event, Subscribed):
            assert not event.gap, event
            ready.set()
        elif isinstance(event, Publication):
            seen.append(event.data)


async def test_sigterm_under_load_loses_no_acknowledged_publication(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    channel = "chat:drain-under-load"
    # History long enough to bridge the drain (window + advised delay + reconnect).
    config = write_config(tmp_path, "[namespaces.chat]\nhistory_size = 2000\n")
    args = ["--broker", redis_server.url, "--drain-window", "1", "--config", str(config)]
    a, b = KizunaProcess(args=args), KizunaProcess(args=args)
    with a, b:
        clients = [
            Client(
                [a.ws_url, b.ws_url],
                token=mint_token(JWT_SECRET, f"drain-{i}"),
                backoff=Backoff(min_delay=0.05, max_delay=0.5),
            )
            for i in range(CLIENTS)
        ]
        publisher = Client(b.ws_url, token=mint_token(JWT_SECRET, "publisher"))
        seen: list[list[int]] = [[] for _ in clients]
        ready = [asyncio.Event() for _ in clients]
        for client in (*clients, publisher):
            await client.connect()
        followers = [
            asyncio.create_task(_follow(c, channel, s, r))
            for c, s, r in zip(clients, seen, ready, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)

        acked: list[int] = []
        stop = asyncio.Event()

        async def publish() -> None:
            n = 0
            while not stop.is_set():
                await publisher.publish(channel, n)  # returns once acknowledged
                acked.append(n)
                n += 1
                await asyncio.sleep(0.005)

        producer = asyncio.create_task(publish())
        await asyncio.sleep(0.5)
        assert a.process is not None
        a.signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(a.process.wait, 15)
        await asyncio.sleep(0.5)
        stop.set()
        await producer

        async def caught_up() -> None:
            while any(len(s) < len(acked) for s in seen):  # noqa: ASYNC110 - many lists to watch
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(caught_up(), 15)
        finally:
            for follower in followers:
                follower.cancel()
            for client in (*clients, publisher):
                await client.close()
    assert exit_code == 0
    assert len(acked) > 100
    for i, received in enumerate(seen):
        assert received == acked, f"client {i}: {len(received)} of {len(acked)}"
