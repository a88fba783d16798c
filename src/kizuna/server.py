"""Assemble a kizuna server from a Config: node, broker, auth, edges, one ASGI app.

One ASGI app serves the native WebSocket endpoint, the HTTP API, ``/metrics``,
``/healthz``, ``/readyz`` and the static pages. The WebSocket endpoint is
dispatched before Starlette's router: it is the hot path and needs nothing
from the framework.
"""

from __future__ import annotations

import contextlib
import gc
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, cast

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from kizuna.broker import create_broker
from kizuna.config import Config
from kizuna.core.auth import JWTAuthenticator, JWTSettings
from kizuna.core.node import Node
from kizuna.observability import LogEvents, Metrics, Observer, get_logger
from kizuna.observability.stats import snapshot
from kizuna.observability.tracing import tracing_requested
from kizuna.transports.common import RAW_SEND, HandshakeSettings
from kizuna.transports.http_api import api_routes, json_response
from kizuna.transports.http_guard import guarded_http_protocol
from kizuna.transports.http_publish import publish_route
from kizuna.transports.longpoll import longpoll_route
from kizuna.transports.socketio import socketio_app
from kizuna.transports.sse import SSEEndpoint
from kizuna.transports.websocket import WebSocketEndpoint
from kizuna.transports.websocket_protocol import DetachableWebSocketProtocol

__all__ = ["Server", "build_server", "dev_secret"]

WEBSOCKET_PATH = "/connection/websocket"
SSE_PATH = "/connection/sse"
SOCKETIO_PREFIX = "/socket.io/"
TRANSPORTS = ("websocket", "sse", "longpoll", "http", "socketio", "grpc")
"""The metrics' transport label values."""


def dev_secret() -> str:
    """A random HS256 secret for a development server started without one."""
    return secrets.token_urlsafe(32)


def _static_dir() -> Path:
    return Path(str(resources.files("kizuna") / "web" / "static"))


class Server:
    """A configured node and the ASGI app that exposes it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        broker, presence = create_broker(config.broker)
        authenticator = None
        if config.jwt_secret or config.jwt_public_key or config.jwks_url:
            authenticator = JWTAuthenticator(
                JWTSettings(
                    secret=config.jwt_secret,
                    previous_secret=config.jwt_previous_secret,
                    public_key=config.public_key_pem(),
                    jwks_url=config.jwks_url,
                    audience=config.jwt_audience,
                    issuer=config.jwt_issuer,
                )
            )
        self.metrics = Metrics()
        self.tracer = None
        if tracing_requested():
            from kizuna.observability.tracing import OTelTracer

            self.tracer = OTelTracer()
        self.node = Node(
            broker,
            presence,
            authenticator=authenticator,
            options=config.node_options(),
            # metrics = false: no counting at all (the logs stay), e.g. to measure its cost.
            events=Observer(self.metrics) if config.metrics else LogEvents(),
            tracer=self.tracer,
        )
        self.broker_up = 0.0
        self.metrics.watch(self._scrape_gauges)
        self.metrics.prepare(list(TRANSPORTS), list(config.namespaces))
        self.handshake = HandshakeSettings(allowed_origins=tuple(config.allowed_origins))
        self.websocket = WebSocketEndpoint(self.node, self.handshake)
        self.socketio = socketio_app(self.node, self.handshake)
        # An open SSE stream keeps its whole chain of ASGI calls alive; routed here, past
        # Starlette's router and exception layers, that chain is the CORS layer alone.
        sse = cast(ASGIApp, SSEEndpoint(self.node, self.handshake))
        self.sse = CORSMiddleware(sse, **self._cors())
        self.http = self._build_http()

    def _scrape_gauges(self) -> dict[str, float]:
        return {
            "queue_bytes": float(sum(c.queued_bytes for c in self.node.clients.values())),
            "channels": float(len(self.node.hub)),
            "broker_up": self.broker_up,
        }

    def _build_http(self) -> Starlette:
        node, handshake = self.node, self.handshake
        routes: list[Any] = [
            Route("/healthz", self._healthz),
            Route("/readyz", self._readyz),
            Route(SSE_PATH, self.sse, methods=["GET"]),  # HEAD; GET comes straight to self.sse
            longpoll_route(node, handshake),
            publish_route(node, handshake, self.config.max_message_size),
        ]
        if self.config.metrics:
            routes.append(Route("/metrics", self._metrics))
            routes.append(Route("/dashboard/stats", self._dashboard_stats))
        if self.config.api_key:
            routes.extend(api_routes(self.node, self.config.api_key, self.config.max_message_size))
        static = _static_dir()
        routes.append(Route("/", self._page("index.html")))
        routes.append(Route("/dashboard", self._page("dashboard.html")))
        routes.append(Mount("/static", StaticFiles(directory=static), name="static"))
        cors = Middleware(CORSMiddleware, **self._cors())
        return Starlette(routes=routes, middleware=[cors], lifespan=self._lifespan)

    def _cors(self) -> dict[str, Any]:
        """Browsers may read the HTTP transports (SSE, poll, publish) from pages served
        by another allowed origin — another node of the same deployment, say."""
        return {
            "allow_origins": list(self.config.allowed_origins),
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
            "max_age": 600,
        }

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.node.start()
        self.broker_up = 1.0
        grpc_server = await self._start_grpc() if self.config.grpc_port else None
        _freeze_startup_objects()
        try:
            yield
        finally:
            if grpc_server is not None:
                from kizuna.transports.grpc import stop_grpc_server

                await stop_grpc_server(grpc_server, grace=1.0)
            await self.node.shutdown()
            await self.socketio.engineio_server.shutdown()  # its client monitor task
            if self.tracer is not None:
                self.tracer.shutdown()

    async def _start_grpc(self) -> Any:
        """The gRPC edge on ``grpc_port``, in this event loop; None without the extra."""
        try:
            from kizuna.transports.grpc import start_grpc_server
        except ImportError as exc:
            get_logger("kizuna.server").warning(
                "grpc_disabled",
                reason=f"gRPC needs an optional extra: pip install 'kizuna[grpc]' ({exc})",
            )
            return None
        return await start_grpc_server(self.node, self.config)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope["path"] == WEBSOCKET_PATH:
            await self.websocket(scope, receive, send)
        elif kind != "lifespan" and scope["path"].startswith(SOCKETIO_PREFIX):
            # python-engineio matches on the full path, so it is not mounted under Starlette.
            await self.socketio(scope, receive, send)
        else:
            if scope.get("path") != SSE_PATH:
                await self.http(scope, receive, send)
                return
            scope[RAW_SEND] = send  # the stream's body chunks may skip the middleware
            try:
                if scope.get("method") == "GET":
                    await self.sse(scope, receive, send)
                else:  # a CORS preflight, HEAD, or a method to refuse with 405
                    await self.http(scope, receive, send)
            finally:
                # ``send`` is bound to uvicorn's request cycle, which holds this scope: left
                # in, the request's objects could be freed only by a full cyclic-GC pass.
                scope.pop(RAW_SEND, None)

    @staticmethod
    def _page(name: str) -> Any:
        path = _static_dir() / name

        async def page(request: Request) -> Response:
            return FileResponse(path, media_type="text/html")

        return page

    async def _healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        ready = await self.node.ready()
        self.broker_up = 1.0 if ready or self.node.draining else 0.0
        return json_response({"ready": ready}, 200 if ready else 503)

    async def _metrics(self, request: Request) -> Response:
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            text = generate_openmetrics(self.metrics.registry)  # type: ignore[no-untyped-call]
            return Response(text, media_type=OPENMETRICS_CONTENT_TYPE)
        body = generate_latest(self.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _dashboard_stats(self, request: Request) -> Response:
        stats = snapshot(self.metrics.registry)
        stats["node"] = f"{self.config.host}:{self.config.port}"
        return json_response(stats)

    def uvicorn_config(self) -> uvicorn.Config:
        cfg = self.config
        return uvicorn.Config(
            self,
            host=cfg.host,
            port=cfg.port,
            loop="uvloop",
            http=guarded_http_protocol(cfg.handshake_timeout, self.node.events.limit_refused),
            ws=DetachableWebSocketProtocol,
            # The framing layer refuses to buffer frames far over the limit (1009);
            # frames just over it reach the client and close with 4004.
            ws_max_size=cfg.max_message_size * 2,
            ws_ping_interval=cfg.ping_interval,
            ws_ping_timeout=cfg.ping_timeout or None,  # 0: no timeout
            ws_per_message_deflate=cfg.websocket_compression,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )

    async def serve(self) -> None:
        await _UvicornServer(self.uvicorn_config(), self.node, self.config.drain_window).serve()


def _freeze_startup_objects() -> None:
    """Keep what exists at startup out of every later cyclic-GC pass.

    Modules, classes and functions of kizuna and its libraries are tens of
    thousands of GC-tracked objects that live as long as the process; every full
    collection would walk them again — a pause of tens of milliseconds, taken in
    the middle of someone's fan-out. ``gc.freeze()`` moves them to a permanent
    generation (they are still freed by reference counting if ever released).
    """
    gc.collect()
    gc.freeze()


class _UvicornServer(uvicorn.Server):
    """uvicorn, but clients are closed with kizuna's codes before uvicorn closes sockets.

    On SIGTERM: stop accepting (readiness is false from then on), then close the
    clients with 3001 — reconnect advice, queued messages flushed — spread over
    ``drain_window``, then let uvicorn finish. uvicorn's own shutdown would close
    WebSockets with 1012 all at once, before the lifespan ends.
    """

    def __init__(self, config: uvicorn.Config, node: Node, drain_window: float) -> None:
        super().__init__(config)
        self._node = node
        self._drain_window = drain_window

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and self._captured_signals[-1:] == [sig]:
            # uvicorn re-raises the signal after shutting down, so the process would die
            # of it; a drained SIGTERM is a clean exit, status 0.
            self._captured_signals.pop()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting first
            server.close()
        await self._node.close_clients(window=self._drain_window)
        await super().shutdown(sockets)


def build_server(config: Config) -> Server:
    return Server(config)
