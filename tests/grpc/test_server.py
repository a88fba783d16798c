"""start_grpc_server / stop_grpc_server in this process, against a real node and port."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kizuna.broker import create_broker
from kizuna.core.node import Node
from kizuna.exceptions import KizunaError
from kizuna.transports.grpc import start_grpc_server, stop_grpc_server
from tests.grpc.clients import TIMEOUT
from tests.support.processes import free_port


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    grpc_port: int = 0


async def test_a_port_in_use_is_a_kizuna_error() -> None:
    """Even by another gRPC server: grpc's default SO_REUSEPORT would share it silently."""
    broker, presence = create_broker("memory://")
    node = Node(broker, presence)
    await node.start()
    port = free_port()
    first = await start_grpc_server(node, Settings(grpc_port=port))
    try:
        with pytest.raises(KizunaError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_grpc_server(node, Settings(grpc_port=port))
    finally:
        await stop_grpc_server(first, grace=0)
        await node.shutdown()


async def test_start_serves_and_stop_stops() -> None:
    broker, presence = create_broker("memory://")
    node = Node(broker, presence)
    await node.start()
    port = free_port()
    server = await start_grpc_server(node, Settings(grpc_port=port))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        await stop_grpc_server(server, grace=0)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    await node.shutdown()
