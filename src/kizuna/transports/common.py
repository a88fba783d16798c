"""What every HTTP-based edge does at the handshake, in one place.

The rules themselves (where a token may be, which Origins may connect) are
sans-I/O in ``kizuna.protocol.handshake``; this module applies them to an ASGI
scope and asks the node to verify the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kizuna.core.node import Node
from kizuna.core.ports import Credentials
from kizuna.exceptions import AuthError
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.handshake import origin_allowed, parse_query, token_from_request

__all__ = ["HandshakeSettings", "HandshakeVerdict", "check_handshake", "deny_body", "scope_headers"]

TOKEN_COOKIE = "kizuna_token"


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    allowed_origins: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class HandshakeVerdict:
    credentials: Credentials | None = None
    remote_addr: str = ""
    error: AuthError | None = None
    status: int = 200


def scope_headers(scope: dict[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers as a dict with lower-case names (last value wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def check_handshake(
    node: Node, settings: HandshakeSettings, scope: dict[str, Any], transport: str
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


def deny_body(error: AuthError) -> bytes:
    return orjson.dumps({"error": {"code": int(error.code), "message": error.message}})
