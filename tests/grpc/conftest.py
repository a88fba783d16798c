"""Fixtures of the gRPC suite: a real kizuna node serving gRPC, and grpcio clients that dial it.

One node (package scope) serves every test that needs no special flags; tests
keep out of each other's way with channel names unique per test (:func:`uid`).
The node is ``python -m tests.grpc.launcher`` (HTTP + WebSocket + gRPC on one
event loop) until ``kizuna serve`` starts the gRPC edge itself; then only
:class:`GrpcNode` below changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from kizuna.core.auth import mint_token
from kizuna.transports.grpc_gen import chat_pb2_grpc
from tests.support.processes import (
    JWT_SECRET,
    NAMESPACES_TOML,
    KizunaProcess,
    free_port,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class GrpcNode(KizunaProcess):
    """A kizuna node with its gRPC edge on ``grpc_port``.

    A plain ``kizuna serve`` with ``KIZUNA_GRPC_PORT`` set: the server's lifespan
    starts the gRPC edge in the same event loop.
    """

    grpc_port: int = field(default_factory=free_port)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 15.0) -> GrpcNode:
        self.env = {"KIZUNA_GRPC_PORT": str(self.grpc_port), "KIZUNA_LOG_LEVEL": "info", **self.env}
        super().start(timeout)
        wait_for_port(self.grpc_port, timeout)
        return self

    def close_log(self) -> None:
        """Close the output file (an unclosed one is a ResourceWarning, an error here)."""
        log = self._log
        if log is not None:
            log.close()  # type: ignore[attr-defined]
            self._log = None


@pytest.fixture(scope="package")
def grpc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcNode]:
    """The shared node: default namespaces plus ``small`` (history of 3)."""
    config = tmp_path_factory.mktemp("kizuna-grpc") / "kizuna.toml"
    config.write_text(NAMESPACES_TOML)
    # No grace after a token expires: the expiry test would otherwise wait 10 s.
    node = GrpcNode(env={"KIZUNA_CONFIG": str(config), "KIZUNA_TOKEN_EXPIRY_GRACE": "0"})
    try:
        yield node.start()
    finally:
        node.stop()
        node.close_log()


def token(sub: str = "alice", **kwargs: Any) -> str:
    return mint_token(JWT_SECRET, sub, **kwargs)


def auth(sub: str = "alice", **kwargs: Any) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a fresh token for ``sub``."""
    return (("authorization", f"Bearer {token(sub, **kwargs)}"),)


@pytest.fixture
async def channel(grpc_node: GrpcNode) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(grpc_node.grpc_target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatServiceStub:
    return chat_pb2_grpc.ChatServiceStub(channel)
