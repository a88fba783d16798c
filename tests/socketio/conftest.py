"""Fixtures of the Socket.IO tests: real servers, real socket.io-client processes.

Servers are real ``kizuna serve`` processes, which serve Socket.IO at ``/socket.io/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.socketio.clients import NativeClient, SioDriver
from tests.support.processes import KizunaProcess, serve

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_ORIGIN = "http://allowed.example"


serve_socketio = serve
"""Every ``kizuna serve`` serves Socket.IO at /socket.io/."""


@pytest.fixture(scope="package")
def server() -> Iterator[KizunaProcess]:
    """The shared server (memory broker, one allowlisted Origin); tests use unique rooms."""
    with serve_socketio("--allowed-origins", ALLOWED_ORIGIN) as process:
        yield process


@pytest.fixture
async def sio() -> AsyncIterator[SioDriver]:
    """A socket.io-client process for the test, stopped when it ends."""
    driver = await SioDriver.start()
    yield driver
    await driver.aclose()


OpenNative = Callable[..., Coroutine[Any, Any, NativeClient]]


@pytest.fixture
async def open_native() -> AsyncIterator[OpenNative]:
    """Open native WebSocket clients; every one is closed when the test ends."""
    clients: list[NativeClient] = []

    async def opener(ws_url: str, jwt_token: str) -> NativeClient:
        client = await NativeClient.open(ws_url, jwt_token)
        clients.append(client)
        return client

    yield opener
    for client in clients:
        await client.aclose()
