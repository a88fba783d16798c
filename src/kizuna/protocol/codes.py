"""Numbered error and disconnect codes, with their reconnect rules.

Two families, as in centrifuge's ``errors.go`` / ``disconnect.go``:

* **Error codes (100–199)** answer one command. The connection stays open.
  They travel in a reply: ``{"id": 7, "error": {"code": 103, "message": "..."}}``.
* **Disconnect codes (3000–4999)** end a connection. On WebSocket they are the
  close frame's code (RFC 6455 §7.4.2 reserves 3000–4999 for applications); on
  SSE and long-poll they arrive as a ``disconnect`` push.

  - 3000–3999: the client **may reconnect** (with backoff) and recover.
  - 4000–4999: the client **must not reconnect** without changing something
    (a new token, a smaller message, a fixed bug).

The numeric value is also the ``code`` label of the metrics, so an operator
sees on a dashboard exactly what a client saw.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["DisconnectCode", "ErrorCode"]


class ErrorCode(IntEnum):
    """Codes in an error reply to one command; the connection stays open."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    NOT_SUBSCRIBED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112
    BROKER_UNAVAILABLE = 113
    MESSAGE_TOO_LARGE = 114

    @property
    def description(self) -> str:
        return _ERROR_TEXT[self]


_ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL: "internal server error",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.UNKNOWN_CHANNEL: "unknown channel",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.METHOD_NOT_FOUND: "method not found",
    ErrorCode.ALREADY_SUBSCRIBED: "already subscribed",
    ErrorCode.LIMIT_EXCEEDED: "limit exceeded",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.NOT_AVAILABLE: "not available",
    ErrorCode.TOKEN_EXPIRED: "token expired",
    ErrorCode.NOT_SUBSCRIBED: "not subscribed",
    ErrorCode.TOO_MANY_REQUESTS: "too many requests",
    ErrorCode.UNRECOVERABLE_POSITION: "unrecoverable position",
    ErrorCode.BROKER_UNAVAILABLE: "broker unavailable, retry later",
    ErrorCode.MESSAGE_TOO_LARGE: "message too large",
}


class DisconnectCode(IntEnum):
    """Codes that end a connection. 3xxx: reconnect allowed; 4xxx: do not."""

    # 3000–3999: reconnect allowed.
    SHUTDOWN = 3001
    """The node is shutting down or draining; reconnect (to another node)."""
    SLOW = 3002
    """The outbound queue overflowed; reconnect and recover from history."""
    WRITE_ERROR = 3003
    """Writing to the connection failed."""
    NO_PONG = 3004
    """No answer to the heartbeat in time."""
    INSUFFICIENT_STATE = 3005
    """The server lost track of a subscription's position; reconnect to recover."""
    TOKEN_EXPIRED = 3006
    """The token expired and was not refreshed in time; refresh it, then reconnect."""
    CONNECT_TIMEOUT = 3007
    """No connect command arrived in time after the handshake."""
    SERVER_ERROR = 3008
    """An internal error; reconnect."""
    CONNECTION_LIMIT = 3009
    """A connection limit was reached (node, user or IP); try again later."""

    # 4000–4999: terminal, do not reconnect as is.
    BAD_REQUEST = 4001
    """Malformed frame or a command out of order (for example before connect)."""
    UNAUTHORIZED = 4002
    """The token is invalid; do not reconnect with the same token."""
    FORBIDDEN = 4003
    """The server refuses this client (revoked token, user disconnected by the API)."""
    MESSAGE_TOO_LARGE = 4004
    """A frame exceeded the configured maximum message size."""
    TOO_MANY_REQUESTS = 4005
    """The client kept sending after being rate limited."""

    @property
    def reconnect(self) -> bool:
        """Whether a client may reconnect after this code."""
        return reconnect_allowed(int(self))

    @property
    def reason(self) -> str:
        return self.name.lower().replace("_", " ")


def reconnect_allowed(code: int) -> bool:
    """The reconnect rule for any close code, including ones this version does not know.

    3000–3999 may reconnect; 4000–4999 must not. WebSocket's own codes below
    3000 (1001 going away, 1006 abnormal closure, 1011 keepalive timeout...)
    are network-level events, after which reconnecting is the right move.
    """
    return not 4000 <= code <= 4999
