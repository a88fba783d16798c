"""Rules every HTTP-based handshake shares: where the token is, which Origins may connect.

Sans-I/O: these take header and query values and return answers, so the
WebSocket, SSE, long-poll and Socket.IO edges apply exactly the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

__all__ = ["origin_allowed", "parse_query", "token_from_request"]


def token_from_request(
    headers: Mapping[str, str], query: Mapping[str, list[str]], cookie_name: str | None = None
) -> str | None:
    """A handshake's token: ``Authorization: Bearer``, then ``?token=``, then a cookie."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = query.get("token")
    if tokens and tokens[0]:
        return tokens[0]
    if cookie_name:
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == cookie_name and value:
                return value
    return None


def parse_query(query_string: bytes | str) -> dict[str, list[str]]:
    text = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    return parse_qs(text, keep_blank_values=True)


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a handshake with this ``Origin`` may proceed (cross-site WebSocket hijacking).

    * No Origin header: not a browser, so not a cross-site request: allowed.
    * ``*`` in the allowlist: everything is allowed.
    * An Origin in the allowlist (scheme://host[:port], compared exactly): allowed.
    * An Origin whose host[:port] equals the request's Host (same origin): allowed.
    * Anything else, including ``null``: refused.
    """
    if origin is None:
        return True
    allowed = list(allowed)
    if "*" in allowed or origin in allowed:
        return True
    if origin == "null" or host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()
