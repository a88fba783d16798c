"""Instructions per connect, counted by callgrind: an A/B that a noisy machine cannot blur.

Wall-clock CPU per connect moved by ±10 % between identical runs on the shared machines
this was written on; a change worth 3 % could not be seen. ``valgrind --tool=callgrind``
counts the instructions the server executes instead, which repeat within 0.3 % for the
same build. This runs ``kizuna serve`` (the benchmark's configuration) under callgrind
twice — once with no connects, once with ``--connects`` — and prints the difference per
connect: each connect is a WebSocket handshake, a ``connect`` command with its own JWT, and
a close once all are open. Kernel time (accept, reads, writes) is not counted.

Run: ``python -m bench.instructions [--connects 500] [--in-flight 20] [--src DIR]`` (DIR: a
checkout's ``src``, for the other side of an A/B). Needs valgrind (Debian's package). Each
run takes a minute or two: the server starts about 40× slower under callgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import websockets

from bench.peer import JWT_SECRET, KIZUNA_CONFIG, PEERS
from bench.procs import free_port, wait_for_port

__all__ = ["connects", "instructions", "main"]

_COLLECTED = re.compile(r"Collected : (\d+)")


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


def instructions(count: int, in_flight: int, src: Path | None, port: int) -> int:
    """Instructions a ``kizuna serve`` under callgrind executed, start to exit, with ``count``."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
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
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, timeout=300)
        asyncio.run(connects(port, count, in_flight))
        asyncio.run(asyncio.sleep(1))  # the closes' last frames
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=300)[0].decode(errors="replace")
    found = _COLLECTED.search(output)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{output[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--connects", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--src", type=Path, default=None, help="a checkout's src/ to measure")
    args = parser.parse_args(argv)
    idle = instructions(0, args.in_flight, args.src, free_port())
    busy = instructions(args.connects, args.in_flight, args.src, free_port())
    per_connect = (busy - idle) / args.connects
    print(f"start-up and exit: {idle:,} instructions")
    print(f"with {args.connects} connects: {busy:,}")
    print(f"per connect: {per_connect:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
