"""What every HTTP-based edge does at the handshake, in one place.

The rules themselves (where a token may be, which Origins may connect) are
sans-I/O in ``kizuna.protocol.handshake``; this module applies them to an ASGI
scope and asks the node to verify the token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kizuna.core.node import Node
from kizuna.core.ports import Credentials
from kizuna.exceptions import AuthError, ProtocolError
from kizuna.protocol.codec import MAX_CHANNEL_LENGTH
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.handshake import origin_allowed, parse_query, token_from_request

__all__ = [
    "RAW_SEND",
    "HandshakeSettings",
    "HandshakeVerdict",
    "anonymous_refused",
    "channels_param",
    "check_handshake",
    "deny_body",
    "error_body",
    "http_status",
    "scope_headers",
]

TOKEN_COOKIE = "kizuna_token"

RAW_SEND = "kizuna.raw_send"
"""Scope key for the ASGI server's own ``send``, put there before any middleware wraps it.

A streaming endpoint (SSE) writes its first message, the response start, through
the middleware (CORS adds its headers there); the body chunks that follow pass
through the wrappers unchanged, so it may write them through the server's send —
or, with uvicorn, straight to the socket (see sse.py).
"""


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    allowed_origins: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class HandshakeVerdict:
    credentials: Credentials | None = None
    remote_addr: str = ""
    error: AuthError | None = None
    status: int = 200


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers as a dict with lower-case names (last value wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def check_handshake(
    node: Node, settings: HandshakeSettings, scope: Mapping[str, Any], transport: str
) -> HandshakeVerdict:
    """Apply the Origin rule and verify a handshake token, if there is one."""
    headers = scope_headers(scope)
    client = scope.get("client")
    remote = f"{client[0]}:{client[1]}" if client else ""
    if not origin_allowed(headers.get("origin"), headers.get("host"), settings.allowed_origins):
        node.events.connection_rejected(transport, ErrorCode.PERMISSION_DENIED)
        error = AuthError(ErrorCode.PERMISSION_DENIED, "origin not allowed")
        return HandshakeVerdict(remote_addr=remote, error=error, status=403)
    token = token_from_request(headers, parse_query(scope.get("query_string", b"")), TOKEN_COOKIE)
    if token is None:
        return HandshakeVerdict(remote_addr=remote)
    try:
        credentials = await node.authenticate(token, transport)
    except AuthError as exc:
        node.events.connection_rejected(transport, exc.code)
        return HandshakeVerdict(remote_addr=remote, error=exc, status=401)
    return HandshakeVerdict(credentials=credentials, remote_addr=remote)


STATUS_FOR_CODE = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNKNOWN_CHANNEL: 404,
    ErrorCode.METHOD_NOT_FOUND: 404,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_AVAILABLE: 503,
    ErrorCode.BROKER_UNAVAILABLE: 503,
}
"""The HTTP status that goes with each error code; anything else is 400."""


def http_status(code: int) -> int:
    return STATUS_FOR_CODE.get(ErrorCode(code), 400)


def error_body(code: int, message: str) -> bytes:
    """The JSON error every HTTP edge answers with."""
    return orjson.dumps({"error": {"code": int(code), "message": message}})


def deny_body(error: ProtocolError) -> bytes:
    return error_body(error.code, error.message)


def channels_param(query: dict[str, list[str]]) -> list[str]:
    """``channels=a,b`` or ``channels=a&channels=b``, in order, without repeats.

    Raises ProtocolError (107) when none is given or a name is malformed.
    """
    names: list[str] = []
    for value in query.get("channels", []):
        for name in value.split(","):
            name = name.strip()
            if not name or len(name) > MAX_CHANNEL_LENGTH:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed channel name")
            if name not in names:
                names.append(name)
    if not names:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "channels is required")
    return names


def anonymous_refused(node: Node, verdict: HandshakeVerdict) -> AuthError | None:
    """The error for a tokenless request where no namespace admits anonymous readers."""
    if verdict.credentials is None and not node.anonymous_allowed:
        return AuthError(ErrorCode.UNAUTHORIZED, "token required")
    return None
