"""Where the client's token comes from, and when to ask for another.

The rule that keeps a client from spinning: a token the server refused is
never sent again. When the callback offers that same token (or none), the
client stops for good instead of retrying it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

__all__ = ["TokenCallback", "TokenRefused", "TokenSource"]

TokenCallback = Callable[[], Awaitable[str | None]]
"""Returns a fresh token; None (or "") means "no longer authorised": the client stops."""


class TokenRefused(Exception):
    """The callback has no usable token: the client stops (4002)."""


class TokenSource:
    """A static token, a callback, or both."""

    def __init__(self, token: str | None, get_token: TokenCallback | None) -> None:
        self.current = token
        self._get_token = get_token
        self._refused: str | None = None

    @property
    def can_refresh(self) -> bool:
        return self._get_token is not None

    async def for_connect(self) -> str | None:
        """The token for the next ``connect``: the current one, or a new one from the callback.

        Raises TokenRefused; lets the callback's own exceptions through (a
        transient failure: the caller backs off and asks again).
        """
        if self.current is None and self._get_token is not None:
            token = await self._get_token()
            if not token:
                raise TokenRefused("the token callback returned no token")
            if token == self._refused:
                raise TokenRefused("the token callback returned the token just refused")
            self.current = token
        return self.current

    def refused(self, token: str | None) -> bool:
        """The server refused ``token``. Whether a new one can be asked for (a callback exists)."""
        if self._get_token is None:
            return False
        self._refused = token
        self.current = None
        return True

    async def fresh(self) -> str | None:
        """A token to refresh with before expiry, or None when the callback has nothing new."""
        if self._get_token is None:
            return None
        token = await self._get_token()
        return token if token and token != self.current else None

    def accepted(self, token: str) -> None:
        """The server took ``token`` (a refresh succeeded)."""
        self.current = token
