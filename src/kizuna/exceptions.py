"""kizuna's one exception tree.

Every error kizuna raises is a :class:`KizunaError`. Third-party errors are
translated where they enter (``raise BrokerError(...) from exc``), so callers
never need to know which library sits behind a port::

    KizunaError
    ├── ConfigError            invalid configuration; lists every bad field
    ├── ProtocolError          a peer sent something the protocol forbids
    │                          (carries the numbered ErrorCode to answer with)
    ├── AuthError              a token is missing, invalid, expired or forbids the action
    ├── BrokerError            the broker failed (Redis down, script error, ...)
    │   └── BrokerUnavailable  the broker cannot be reached right now; retry later
    └── ClientError            raised by the Python client SDK (kizuna.client)
        ├── ServerRejected     the server answered a command with an error reply
        ├── MalformedFrame     the server sent something the protocol forbids
        ├── ConnectionLost     the connection dropped; the client reconnects by itself
        └── Disconnected       the connection ended for good (a 4xxx code, or closed)

Errors a *client* sees are numbered codes (``kizuna.protocol.codes``); the
exception carries the code so transports answer with it unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the codes module imports nothing of ours; this keeps it that way at runtime
    from kizuna.protocol.codes import ErrorCode

__all__ = [
    "AuthError",
    "BrokerError",
    "BrokerUnavailable",
    "ClientError",
    "ConfigError",
    "KizunaError",
    "ProtocolError",
    "ServerRejected",
]


class KizunaError(Exception):
    """Base of every error kizuna raises."""


class ConfigError(KizunaError):
    """The configuration is invalid. ``problems`` lists every bad field at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class ProtocolError(KizunaError):
    """A peer broke the protocol; ``code`` is what the server answers with."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code = code
        self.message = message or code.description
        super().__init__(f"{int(code)} {self.message}")


class AuthError(ProtocolError):
    """Authentication or authorization failed.

    A subclass of :class:`ProtocolError` because it is answered the same way: a
    numbered code (101 unauthorized, 103 permission denied, 109 token expired).
    """

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        super().__init__(code, message)


class BrokerError(KizunaError):
    """The broker failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached now; the operation may succeed later."""


class ClientError(KizunaError):
    """An error in the Python client SDK."""


class ServerRejected(ClientError):
    """The server answered a command with an error reply."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code} {message}")
