"""A kizuna server in the test's own event loop, for tests that look inside it.

Most tests run ``kizuna serve`` as a process (processes.py). A few check what a
process cannot show from outside — which tasks the loop holds, which write path a
transport took — so they run the same server (uvicorn with kizuna's protocol
classes, as ``kizuna serve`` runs it) in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from kizuna.config import load_config
from kizuna.server import Server, build_server
from tests.support.processes import JWT_SECRET, free_port

__all__ = ["serving", "until_no_clients"]


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[Server, int]]:
    """Run a server on a free port until the block ends; yields it and its port."""
    port = free_port()
    settings = {"port": port, "grpc_port": 0, "jwt_secret": JWT_SECRET, "log_level": "warning"}
    server = build_server(load_config(env={}, overrides={**settings, **overrides}))
    runner = uvicorn.Server(server.uvicorn_config())
    task = asyncio.create_task(runner.serve())
    try:
        while not runner.started:
            assert not task.done(), "the server stopped before it started"
            await asyncio.sleep(0.02)
        yield server, port
    finally:
        runner.should_exit = True
        await asyncio.wait_for(task, 15)


async def until_no_clients(server: Server, seconds: float = 4.0) -> None:
    """Wait until every client has left ``server``; fails the test if some stay."""
    for _ in range(int(seconds / 0.02)):
        if not server.node.clients:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"clients still registered: {list(server.node.clients)}")
