"""Run a kizuna node with its gRPC edge: uvicorn and grpc.aio on one event loop.

``python -m tests.grpc.launcher`` reads its configuration exactly as ``kizuna
serve`` does (``KIZUNA_*`` variables, ``KIZUNA_CONFIG`` for a TOML file), and
serves what ``kizuna serve`` will once the server's lifespan starts the gRPC
edge when ``grpc_port`` is not 0. Until then the gRPC tests start this;
afterwards the ``GrpcNode`` fixture in conftest.py switches to ``kizuna serve``.

It wraps the server's lifespan the way server.py should start and stop gRPC:
inside it, so that the node is running before gRPC accepts calls, and gRPC
stops (ending every stream with 3001 after writing what was queued) before
the node shuts down — and before uvicorn re-raises SIGTERM on its way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import uvloop
from starlette.applications import Starlette

from kizuna.config import load_config
from kizuna.observability import configure_logging
from kizuna.server import Server
from kizuna.transports.grpc import start_grpc_server, stop_grpc_server


def with_grpc(server: Server) -> Server:
    """``server`` with gRPC started and stopped inside its lifespan."""
    node_lifespan = server.http.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with node_lifespan(app):
            grpc_server = await start_grpc_server(server.node, server.config)
            try:
                yield
            finally:
                await stop_grpc_server(grpc_server, grace=1.0)

    server.http.router.lifespan_context = lifespan
    return server


def main() -> None:
    config = load_config()
    configure_logging(config.log_level, config.log_format)
    uvloop.run(with_grpc(Server(config)).serve())


if __name__ == "__main__":
    main()
