"""Instructions per connect or per publish, counted by callgrind: an A/B noise cannot blur.

Wall-clock CPU per connect moved by ±10 % between identical runs on the shared machines
this was written on; a change worth 3 % could not be seen. ``valgrind --tool=callgrind``
counts the instructions the server executes instead, which repeat within 0.3 % for the
same build. This runs a server (``kizuna serve`` in the benchmark's configuration, or a
Python peer) under callgrind twice — once without the work, once with it — and prints the
difference per unit of work. Kernel time (accept, reads, writes) is not counted.

Two workloads:

* ``--connects N``: each connect is a WebSocket handshake, a ``connect`` command with its
  own JWT, and a close once all are open (scenario C).
* ``--publishes N``: ``--subscribers`` connections, each subscribed to its own channel,
  and one publisher that sends N publications to channels drawn at random (seeded), five
  at a time, each burst waited for until every delivery (and, on kizuna, every reply) is
  in (scenario D). Both runs open the same subscribers; the difference is the publishes.
  ``--peer py-websockets`` counts the Python peer's server the same way, ``--peer
  kizuna-redis`` kizuna on a private redis-server (Redis itself is not counted).

Run: ``python -m bench.instructions [--connects 500 | --publishes 2000] [--src DIR]``
(DIR: a checkout's ``src``, for the other side of an A/B). Needs valgrind (Debian's
package). Each run takes a minute or two: the server starts about 40× slower under callgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import websockets

from bench.peer import JWT_SECRET, KIZUNA_CONFIG, PEERS
from bench.procs import free_port, wait_for_port

__all__ = ["connects", "instructions", "main", "publishes"]

_COLLECTED = re.compile(r"Collected : (\d+)")
_BURST = 5
"""Publications sent together: the channels scenario's publisher sends five per millisecond."""

Workload = Callable[[int], Coroutine[Any, Any, None]]
"""Given the server's port, does the work (or, for the baseline, only its set-up)."""


async def connects(port: int, count: int, in_flight: int) -> None:
    """``count`` connects with distinct tokens, ``in_flight`` at a time; then close them all."""
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    tokens = PEERS["kizuna"].tokens(count) if count else []
    gate = asyncio.Semaphore(in_flight)
    opened: list[websockets.ClientConnection] = []

    async def one(token: str) -> None:
        async with gate:
            ws = await websockets.connect(url, compression=None, open_timeout=120)
            command = {"id": 1, "method": "connect", "params": {"token": token}}
            await ws.send(orjson.dumps(command).decode())  # text, as every client sends
            reply = str(await asyncio.wait_for(ws.recv(), 120))
            if '"id":1' not in reply or '"error"' in reply:
                raise RuntimeError(f"connect refused: {reply}")
            opened.append(ws)

    await asyncio.gather(*(one(token) for token in tokens))
    await asyncio.gather(*(ws.close() for ws in opened))


class _Counter:
    """Counts marked lines arriving on many connections; wakes whoever waits for a total."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def add(self, n: int) -> None:
        if n:
            self.count += n
            self._changed.set()

    async def reach(self, total: int) -> None:
        while self.count < total:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 120)


async def _read_marked(ws: websockets.ClientConnection, mark: str, counter: _Counter) -> None:
    """Count occurrences of ``mark`` in every frame (kizuna coalesces lines into one frame)."""
    try:
        async for frame in ws:
            text = frame if isinstance(frame, str) else frame.decode()
            if '"error"' in text:
                raise RuntimeError(f"error from the server: {text[:300]}")
            counter.add(text.count(mark))
    except websockets.ConnectionClosed:
        pass


async def publishes(
    port: int,
    peer: str,
    subscribers: int,
    count: int,
    seed: int = 7,
    started: Callable[[], None] | None = None,
) -> None:
    """Scenario D in small: ``subscribers`` channels of one, ``count`` random publications.

    ``started`` is called once the set-up is done, before the first publication (to start
    a profiler on the publishes alone, say).
    """
    spec = PEERS[peer]
    native = spec.protocol == "kizuna"
    url = f"ws://127.0.0.1:{port}{spec.path}"
    channels = [f"{spec.idle_prefix}{i}" for i in range(subscribers)]
    delivered, replies = _Counter(), _Counter()
    opened: list[websockets.ClientConnection] = []
    readers: list[asyncio.Task[None]] = []

    def message(channel: str, content: str) -> str:
        if native:
            data = {"user": "bench", "content": content}
            command = {"id": 3, "method": "publish", "params": {"channel": channel, "data": data}}
            return orjson.dumps(command).decode()
        guide = {"type": "message", "channel": channel, "user": "bench", "content": content}
        return orjson.dumps(guide).decode()

    async def open_one(channel: str | None) -> websockets.ClientConnection:
        ws = await websockets.connect(url, compression=None, open_timeout=120, max_queue=None)
        if native:
            await ws.send(
                orjson.dumps(
                    {"id": 1, "method": "connect", "params": {"token": spec.token()}}
                ).decode()
            )
            last = 1
            if channel is not None:
                await ws.send(
                    orjson.dumps(
                        {"id": 2, "method": "subscribe", "params": {"channel": channel}}
                    ).decode()
                )
                last = 2
            while f'"id":{last},"result"' not in str(await asyncio.wait_for(ws.recv(), 120)):
                pass
        elif channel is not None:
            await ws.send(orjson.dumps({"type": "subscribe", "channel": channel}).decode())
        opened.append(ws)
        return ws

    subs = [await open_one(channel) for channel in channels]
    publisher = await open_one(None)
    readers += [asyncio.create_task(_read_marked(ws, '"B|', delivered)) for ws in subs]
    if native:
        readers.append(asyncio.create_task(_read_marked(publisher, '"result"', replies)))
    # Every subscription proven live (the guide's protocol does not acknowledge one).
    for channel in channels:
        await publisher.send(message(channel, "B|probe"))
    await delivered.reach(subscribers)
    await replies.reach(subscribers if native else 0)
    if started is not None:
        started()
    rng = random.Random(seed)
    sent = 0
    while sent < count:
        burst = min(_BURST, count - sent)
        for _ in range(burst):
            sent += 1
            await publisher.send(message(rng.choice(channels), f"B|{sent}"))
        await delivered.reach(subscribers + sent)
        await replies.reach(subscribers + sent if native else 0)
    await asyncio.gather(*(ws.close() for ws in opened))
    await asyncio.gather(*readers)


def instructions(
    count: int, in_flight: int, src: Path | None, port: int, work: Workload | None = None
) -> int:
    """Instructions a server under callgrind executed, start to exit, doing ``work``.

    Without ``work``: ``kizuna serve`` and ``count`` connects (``in_flight`` at a time).
    With it: ``count`` only names the run; ``work(port)`` is what the server is put through.
    """
    if work is None:
        work = functools.partial(connects, count=count, in_flight=in_flight)
    return _count(_kizuna_argv(port), src, port, work)


def _kizuna_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kizuna.cli",
        "serve",
        "--host=127.0.0.1",
        f"--port={port}",
        "--grpc-port=0",
        f"--jwt-secret={JWT_SECRET}",
        "--log-level=warning",
        f"--config={KIZUNA_CONFIG}",
    ]


def _server_argv(peer: str, port: int, redis_port: int | None = None) -> list[str]:
    if PEERS[peer].protocol == "kizuna":
        broker = [] if redis_port is None else [f"--broker=redis://127.0.0.1:{redis_port}/0"]
        return [*_kizuna_argv(port), *broker]
    refused = SystemExit(f"{peer}: only kizuna, kizuna-redis and py-websockets run here")
    if PEERS[peer].redis or not PEERS[peer].python:
        raise refused  # a helper (Redis) it would need, or not a Python server
    argv, _ = PEERS[peer].command(port, {})
    if argv[0] != sys.executable:
        raise refused
    return argv


def _count(argv: list[str], src: Path | None, port: int, work: Workload) -> int:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, timeout=300)
        asyncio.run(work(port))
        asyncio.run(asyncio.sleep(1))  # the closes' last frames
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=300)[0].decode(errors="replace")
    found = _COLLECTED.search(output)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{output[-2000:]}")
    return int(found.group(1))


@contextlib.contextmanager
def _redis_if(needed: bool) -> Iterator[int | None]:
    """A private redis-server on a free port for a Redis peer (not counted: not under valgrind)."""
    if not needed:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        redis = subprocess.Popen([*argv, "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port, redis)
            yield port
        finally:
            redis.terminate()
            redis.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--connects", type=int, default=None, help="default: 500")
    what.add_argument("--publishes", type=int, default=None)
    parser.add_argument("--in-flight", type=int, default=20, help="handshakes at a time")
    parser.add_argument("--subscribers", type=int, default=200, help="with --publishes")
    parser.add_argument(
        "--peer",
        default="kizuna",
        help="with --publishes: kizuna, kizuna-redis (a private redis-server), py-websockets",
    )
    parser.add_argument("--src", type=Path, default=None, help="a checkout's src/ to measure")
    args = parser.parse_args(argv)
    if args.publishes is None:
        n = args.connects or 500
        unit = "connect"
        idle = instructions(0, args.in_flight, args.src, free_port())
        busy = instructions(n, args.in_flight, args.src, free_port())
    else:
        n = args.publishes
        unit = "publish"
        with _redis_if(PEERS[args.peer].redis) as redis_port:
            idle, busy = (
                _count(
                    _server_argv(args.peer, port, redis_port),
                    args.src,
                    port,
                    functools.partial(
                        publishes, peer=args.peer, subscribers=args.subscribers, count=k
                    ),
                )
                for k, port in ((0, free_port()), (n, free_port()))
            )
    print(f"set-up and exit: {idle:,} instructions")
    print(f"with {n} {unit}{'e' if unit == 'publish' else ''}s: {busy:,}")
    print(f"per {unit}: {(busy - idle) / n:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
