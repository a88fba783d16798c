"""One WebSocket connection's worth of state: commands in flight and how it ended.

A :class:`Session` lives from the opened socket to its close and is then thrown
away, so nothing of a dead connection (a pending reply, a command id) can leak
into the next one. Command ids count from 1 on each connection: the protocol
only needs them unique per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from kizuna.client import frames
from kizuna.client.errors import ConnectionLost, MalformedFrame, ServerRejected

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "NotSent",
    "Outcome",
    "Session",
    "ignore",
]

_T = TypeVar("_T")

# WebSocket close codes (RFC 6455 §7.4.1) for what the client itself observed.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006


@dataclass(slots=True)
class Outcome:
    """How one session ended, and what the client does next."""

    code: int
    reason: str
    reconnect: bool = True
    error: BaseException | None = None
    auth_failed: bool = False
    """A new token may fix it (the first retry then needs no wait)."""
    stable: bool = False
    """The connection had stayed up long enough to reset the backoff."""
    delay: float | None = None
    """The server's advice (a draining node): wait this long instead of the backoff."""


class NotSent(ConnectionLost):
    """The connection was already closing: the command never left, so it is safe to retry."""


class _Pending:
    """A command awaiting its reply. ``on_result`` runs in the reader, in wire order."""

    __slots__ = ("future", "on_error", "on_result")

    def __init__(
        self,
        future: asyncio.Future[Any],
        on_result: Callable[[frames.Obj], Any],
        on_error: Callable[[frames.ErrorReply], None] | None,
    ) -> None:
        self.future = future
        self.on_result = on_result
        self.on_error = on_error


def _settle_with_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: pipelined commands are not always awaited


class Session:
    """A connection: the socket, the commands awaiting replies, and its end."""

    __slots__ = ("_next_id", "client_id", "connected_at", "local_close", "pending", "url", "ws")

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.pending: dict[int, _Pending] = {}
        self.local_close: Outcome | None = None
        """Set when the client (or a disconnect push) decided how this session ends."""
        self.client_id: str | None = None
        """The server's id for the connection, once ``connect`` succeeded."""
        self.connected_at = 0.0
        self._next_id = 0

    @property
    def is_open(self) -> bool:
        return self.ws.state is State.OPEN

    async def send(
        self,
        method: str,
        params: Mapping[str, Any],
        on_result: Callable[[frames.Obj], Any],
        on_error: Callable[[frames.ErrorReply], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Send one command; the returned future resolves with ``on_result``'s value.

        Raises NotSent if the socket is already closing (safe to retry on the
        next connection), ConnectionLost if it closed while sending.
        """
        self._next_id += 1
        cid = self._next_id
        text = frames.encode_command(cid, method, params)
        if not self.is_open:
            raise NotSent("the connection is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[cid] = _Pending(future, on_result, on_error)
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            self.pending.pop(cid, None)
            raise ConnectionLost("the connection dropped") from exc
        return future

    async def request(
        self, method: str, params: Mapping[str, Any], parse: Callable[[frames.Obj], _T]
    ) -> _T:
        """Send one command and wait for its reply, parsed."""
        future = await self.send(method, params, parse)
        value: _T = await future
        return value

    def settle(self, message: frames.Reply | frames.ErrorReply) -> None:
        """Hand a reply to the command it answers (a reply to no known command is ignored).

        Raises MalformedFrame when the result does not have the shape its
        command expects — after telling the caller, so it does not wait.
        """
        pending = self.pending.pop(message.id, None)
        if pending is None:
            return
        if isinstance(message, frames.ErrorReply):
            if pending.on_error is not None:
                pending.on_error(message)
            _settle_with_error(pending.future, ServerRejected(message.code, message.message))
            return
        try:
            value = pending.on_result(message.result)
        except MalformedFrame as exc:
            _settle_with_error(pending.future, exc)
            raise
        if not pending.future.done():
            pending.future.set_result(value)

    def fail_pending(self) -> None:
        """The connection is gone: every command still waiting raises ConnectionLost."""
        for pending in self.pending.values():
            _settle_with_error(pending.future, ConnectionLost("the connection dropped"))
        self.pending.clear()

    def close_code(self) -> tuple[int, str]:
        """The code and reason the connection ended with, as far as the socket knows."""
        protocol = self.ws.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None:
            return rcvd.code, rcvd.reason or f"closed by the server ({rcvd.code})"
        if sent is not None and sent.code != CLOSE_NORMAL:
            return sent.code, sent.reason  # e.g. 1011 keepalive ping timeout
        return CLOSE_ABNORMAL, "connection lost"


def ignore(result: frames.Obj) -> None:
    """The parser for replies whose result carries nothing the caller needs."""
    return
