"""Fixtures of the end-to-end suite: real ``kizuna serve`` processes and clients that dial them.

One shared server (package scope) carries every test that does not need
special flags; those tests keep out of each other's way by using channel and
user names made unique per test (:func:`uid`). Tests whose flags would change
what the others see (timeouts, limits, an audience) start their own servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.clients import Api, NodeClient, PyClient, WireClient
from tests.support.processes import (
    KizunaProcess,
    serve,
    write_config,
)

ALLOWED_ORIGIN = "http://allowed.example"
MAX_MESSAGE_SIZE = 1024


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
