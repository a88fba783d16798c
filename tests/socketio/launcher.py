"""Test support: ``kizuna serve`` with Socket.IO mounted at ``/socket.io/``.

Until server.py mounts :func:`kizuna.transports.socketio.socketio_app` itself,
the Socket.IO tests start this module instead of the ``kizuna`` script:
``python -m tests.socketio.launcher serve --port N ...`` takes exactly the
flags of ``kizuna serve`` (it *is* ``kizuna.cli.main``), with the one
difference that the server class routes ``/socket.io/`` to the Socket.IO app.
Everything else — config, broker, auth, the other endpoints, uvicorn and its
settings — is the real server's.
"""

from __future__ import annotations

import sys
from typing import Any

import kizuna.server
from kizuna.cli import main
from kizuna.config import Config
from kizuna.transports.common import HandshakeSettings
from kizuna.transports.socketio import socketio_app

SOCKETIO_PREFIX = "/socket.io/"


class ServerWithSocketIO(kizuna.server.Server):
    """kizuna's Server, with ``/socket.io/`` answered by the Socket.IO app."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        settings = HandshakeSettings(allowed_origins=tuple(config.allowed_origins))
        self.socketio = socketio_app(self.node, settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(SOCKETIO_PREFIX):
            await self.socketio(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


if __name__ == "__main__":
    # cli._serve imports Server from kizuna.server when it runs: point it at the subclass.
    kizuna.server.Server = ServerWithSocketIO  # type: ignore[misc]
    sys.exit(main(sys.argv[1:]))
