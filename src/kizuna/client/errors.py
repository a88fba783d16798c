"""The client SDK's errors: the ``ClientError`` branch of kizuna's one exception tree.

::

    KizunaError                      (kizuna.exceptions)
    └── ClientError
        ├── ServerRejected           the server answered a command with an error reply (code)
        ├── MalformedFrame           the server sent something that is not the protocol
        ├── ConnectionLost           the connection dropped while a command awaited its reply
        └── Disconnected             the client stopped for good (terminal code, gave up, closed)

Why ``ConnectionLost`` is not retried for you: a publish whose reply never
came may or may not have been applied. Retrying it blindly could publish
twice; the application decides (an ``idempotency_key`` makes a retry safe).
"""

from __future__ import annotations

from kizuna.exceptions import ClientError, ServerRejected

__all__ = ["ClientError", "ConnectionLost", "Disconnected", "MalformedFrame", "ServerRejected"]


class MalformedFrame(ClientError):
    """The server broke the protocol; the client closes with 1002 and reconnects."""


class ConnectionLost(ClientError):
    """The connection dropped before the reply to a command arrived; its outcome is unknown."""


class Disconnected(ClientError):
    """The client will not reconnect: ``code`` and ``reason`` say why.

    4xxx codes come from the server (4002 unauthorized, 4003 forbidden...);
    1000 means the application closed the client.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")
