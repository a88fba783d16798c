"""Fixtures for the client tests: real servers (per test, or per module) and a TCP proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.client.tcp_proxy import TcpProxy
from tests.support.processes import KizunaProcess

SERVER_ARGS = ["--drain-window", "0", "--token-expiry-grace", "0"]
"""Restarts close clients at once (not spread over seconds), and a token's expiry is exact."""


@pytest.fixture
def kizuna() -> Iterator[KizunaProcess]:
    """A fresh ``kizuna serve`` (memory broker) for one test, with SERVER_ARGS."""
    with KizunaProcess(args=SERVER_ARGS) as server:
        yield server


@pytest.fixture(scope="module")
def shared_kizuna() -> Iterator[KizunaProcess]:
    """One server for a module whose tests never restart it (each uses its own channels)."""
    with KizunaProcess(args=SERVER_ARGS) as server:
        yield server


@pytest.fixture
async def proxy(kizuna: KizunaProcess) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test's server."""
    async with TcpProxy(kizuna.port) as p:
        yield p


@pytest.fixture
def roomy_kizuna(tmp_path: Path) -> Iterator[KizunaProcess]:
    """A server whose ``chat`` channels keep 1000 publications, for long absences."""
    config = tmp_path / "kizuna.toml"
    config.write_text("[namespaces.chat]\nhistory_size = 1000\n")
    with KizunaProcess(args=[*SERVER_ARGS, "--config", str(config)]) as server:
        yield server


@pytest.fixture
async def roomy_proxy(roomy_kizuna: KizunaProcess) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(roomy_kizuna.port) as p:
        yield p


@pytest.fixture
async def shared_proxy(shared_kizuna: KizunaProcess) -> AsyncIterator[TcpProxy]:
    """A TCP proxy (its own, for one test) in front of the module's shared server."""
    async with TcpProxy(shared_kizuna.port) as p:
        yield p


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/connection/websocket"
