"""Servers for the interop tests: one node, and two nodes sharing a private Redis.

Each is a plain ``kizuna serve`` with its gRPC edge on a free port, so every
transport the interop test drives is served by the same process it would be
in production. Tests use a channel unique to them, so the servers are shared
by the package.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.grpc.conftest import GrpcNode
from tests.support.processes import RedisProcess


@pytest.fixture(scope="package")
def one_node() -> Iterator[list[GrpcNode]]:
    """A single node on the in-memory broker."""
    node = GrpcNode()
    try:
        yield [node.start()]
    finally:
        node.stop()


@pytest.fixture(scope="package")
def two_nodes(redis_server: RedisProcess) -> Iterator[list[GrpcNode]]:
    """Two nodes on one private Redis; a publication on either reaches both."""
    nodes = [GrpcNode(args=["--broker", redis_server.url]) for _ in range(2)]
    try:
        yield [node.start() for node in nodes]
    finally:
        for node in nodes:
            node.stop()
