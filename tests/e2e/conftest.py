"""Fixtures of the end-to-end suite: real ``kizuna serve`` processes and clients that dial them.

One shared server (package scope) carries every test that does not need
special flags; those tests keep out of each other's way by using channel and
user names made unique per test (:func:`uid`). Tests whose flags would change
what the others see (timeouts, limits, an audience) start their own servers.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.clients import TIMEOUT, Api, NodeClient, PyClient, WireClient
from tests.support.processes import KizunaProcess

ALLOWED_ORIGIN = "http://allowed.example"
MAX_MESSAGE_SIZE = 1024
SMALL_HISTORY = 3

NAMESPACES_TOML = f"""
# The defaults (chat, notifications), plus a namespace whose history is too short to
# recover from after a few publications.
[namespaces.chat]

[namespaces.notifications]
presence = false
join_leave = false
allow_publish = false
history_size = 50

[namespaces.small]
history_size = {SMALL_HISTORY}
"""


def write_config(directory: Path, text: str = NAMESPACES_TOML) -> Path:
    path = directory / "kizuna.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def serve(*args: str, port: int | None = None) -> Iterator[KizunaProcess]:
    """A running ``kizuna serve`` with these flags, stopped (and its log file closed) after."""
    process = KizunaProcess(args=list(args))
    if port is not None:
        process.port = port
    try:
        yield process.start()
    finally:
        process.stop()
        # KizunaProcess.stop() leaves its temporary log file open, which is a ResourceWarning
        # (an error under filterwarnings=error) once the object is collected.
        log = process._log
        if log is not None:
            log.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KizunaProcess]:
    """The shared server: custom namespaces, an allowlisted Origin, a 1 KiB message limit."""
    config = write_config(tmp_path_factory.mktemp("kizuna-e2e"))
    with serve(
        "--config",
        str(config),
        "--allowed-origins",
        ALLOWED_ORIGIN,
        "--max-message-size",
        str(MAX_MESSAGE_SIZE),
    ) as process:
        yield process


@pytest.fixture
def uid() -> str:
    """A short unique suffix for channel and user names, so tests sharing a server never meet."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the test (never through a proxy: all traffic stays on 127.0.0.1)."""
    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
        yield client


@pytest.fixture
def api(http: httpx.AsyncClient, server: KizunaProcess) -> Api:
    """The shared server's HTTP API."""
    return Api(http, server)


OpenPy = Callable[..., Coroutine[Any, Any, PyClient]]
OpenNode = Callable[..., Coroutine[Any, Any, NodeClient]]


@pytest.fixture
async def open_py() -> AsyncIterator[OpenPy]:
    """Open Python clients; every one is closed when the test ends."""
    clients: list[WireClient] = []

    async def opener(url: str, **kwargs: Any) -> PyClient:
        client = await PyClient.open(url, **kwargs)
        clients.append(client)
        return client

    yield opener
    for client in clients:
        await client.aclose()


@pytest.fixture
async def open_node() -> AsyncIterator[OpenNode]:
    """Open Node ``ws`` clients (subprocesses); every one is stopped when the test ends."""
    clients: list[WireClient] = []

    async def opener(url: str, **kwargs: Any) -> NodeClient:
        client = await NodeClient.open(url, **kwargs)
        clients.append(client)
        return client

    yield opener
    for client in clients:
        await client.aclose()
