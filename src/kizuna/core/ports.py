"""The ports the core needs, as ``typing.Protocol``s. Edges implement them.

The core imports no backend and no transport: ``broker/`` implements
:class:`Broker` and :class:`PresenceStore`, ``transports/`` implement
:class:`Transport`, ``core/auth.py`` (and tests) implement
:class:`Authenticator`. Every broker passes one contract suite
(tests/broker/contract.py) that checks the promises written here.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition
from kizuna.protocol.values import value

__all__ = [
    "Authenticator",
    "Broker",
    "BrokerEventHandler",
    "Credentials",
    "HistoryResult",
    "PresenceStore",
    "PublishOptions",
    "Transport",
]


@value
class PublishOptions:
    """How one publication is kept. ``history_size`` 0: no history, no offset."""

    history_size: int = 0
    history_ttl: float = 0.0
    idempotency_key: str | None = None


@value
class HistoryResult:
    """Publications in offset order, and where the channel's history stands now."""

    publications: list[Publication]
    position: StreamPosition


class BrokerEventHandler(Protocol):
    """What a broker calls when something arrives for a channel this node subscribed to.

    Calls for one channel come in publication order, and never concurrently.
    They must not block: the node only enqueues bytes.
    """

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None: ...

    def handle_join(self, channel: str, info: ClientInfo) -> None: ...

    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...

    def handle_gap(self, channel: str) -> None:
        """Publications of ``channel`` were lost on the way (a broker reconnect the
        history could not bridge): local subscribers must recover."""
        ...


class Broker(Protocol):
    """Moves publications between nodes and keeps channel history.

    Contract (checked by tests/broker/contract.py against every broker):

    1. Publishing to history and to subscribers is atomic per channel: the
       offset returned is the offset every subscriber sees, and offsets of one
       channel are consecutive (1, 2, 3, ...) within an epoch.
    2. After :meth:`subscribe` returns, every later publication to that channel
       reaches the handler, once, in offset order.
    3. :meth:`history` with ``since`` returns the publications after it, in
       order; the caller detects a gap by comparing offsets and epochs. When the
       history of a channel is lost (expired, broker restarted), its epoch changes.
    4. A failure to reach the backend raises BrokerUnavailable; nothing is
       acknowledged that was not stored.
    """

    @property
    def pipelines_publishes(self) -> bool:
        """True when :meth:`publish` takes its place in the broker's order as it is called,
        before its first await: a client may then hand over its next publish without
        waiting for this one's reply (see core/client.py). False: one at a time."""
        ...

    @property
    def publishes_in_call(self) -> bool:
        """True when :meth:`publish_now` can publish: the broker stores and delivers a
        publication before the call returns (in-process). The Node then answers a
        client's publish without a coroutine (core/client.py)."""
        ...

    async def start(self, handler: BrokerEventHandler) -> None: ...

    async def close(self) -> None: ...

    async def publish(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition: ...

    def publish_nowait(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> asyncio.Future[StreamPosition]:
        """:meth:`publish` as a future, started in the call: no coroutine, no task.

        The Node uses it for a client's pipelined publishes, only when
        :attr:`pipelines_publishes`. Failures arrive through the future.
        """
        ...

    def publish_now(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        """:meth:`publish`, done in the call; only when :attr:`publishes_in_call`."""
        ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """``limit`` 0 returns only the position; None returns everything kept."""
        ...

    async def remove_history(self, channel: str) -> None: ...

    async def healthy(self) -> bool:
        """Whether the backend is reachable now (for /readyz)."""
        ...


class PresenceStore(Protocol):
    """Who is subscribed to a channel, across all nodes."""

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None: ...

    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of connections, number of distinct users)."""
        ...


@value
class Credentials:
    """What a verified token says about its holder.

    channels: names or ``fnmatch`` patterns the holder may subscribe and publish
    to; None means the token sets no limit beyond the namespace rules.
    """

    user: str
    expires_at: float | None = None
    channels: tuple[str, ...] | None = None
    token_id: str | None = None
    """The ``jti`` claim, for revocation."""
    issued_at: float | None = None
    """The ``iat`` claim, for revoking every token of a user issued before a moment."""


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Credentials:
        """Verify ``token``; raise AuthError (101 or 109) when it is not good."""
        ...


class Transport(Protocol):
    """One client connection's I/O, whatever the wire.

    ``write`` sends one frame (newline-delimited messages); ``close`` ends the
    connection with a disconnect code. Neither may raise for a peer that is
    already gone: the core calls them from its writer and shutdown paths.
    """

    name: str

    async def write(self, frame: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...
