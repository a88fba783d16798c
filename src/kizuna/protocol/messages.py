"""The native protocol's messages as immutable dataclasses (protocol/values.py).

Commands go client → server and carry an ``id``; the reply echoes it.
Pushes go server → client and carry no id. See docs/protocol.md for the wire
form of each; this module is the typed mirror of that page.

Publication payloads stay *bytes of JSON* from the moment they are decoded:
the server never needs to look inside ``data``, and keeping it encoded is what
lets a fan-out encode a publication once for every recipient.
"""

from __future__ import annotations

from dataclasses import field
from typing import TypeAlias

from kizuna.protocol.values import value

__all__ = [
    "ClientInfo",
    "Command",
    "Connect",
    "History",
    "Ping",
    "Presence",
    "PresenceStats",
    "Publication",
    "Publish",
    "Refresh",
    "StreamPosition",
    "Subscribe",
    "Unsubscribe",
]


@value
class StreamPosition:
    """Where a channel's history stands: ``offset`` of the last publication, in ``epoch``.

    The epoch names one life of a channel's history. When the history is lost
    (memory broker restarted, Redis lost the stream) the epoch changes, so a
    position from the old life can never be mistaken for one in the new.
    """

    offset: int
    epoch: str


@value
class ClientInfo:
    """Who published, or who joined or left: a user id and a connection id."""

    user: str
    client: str


@value
class Publication:
    """One message in a channel. ``data`` is the JSON payload, already encoded.

    ``offset`` is 0 when the channel keeps no history. ``traceparent`` carries
    the W3C trace context from publisher to every delivering node; it never
    reaches clients.
    """

    data: bytes
    offset: int = 0
    info: ClientInfo | None = None
    published_at: float = 0.0
    traceparent: str | None = None


@value
class Connect:
    id: int
    token: str | None = None
    name: str | None = None


@value
class Subscribe:
    id: int
    channel: str
    since: StreamPosition | None = None
    """When set, recover what was published after this position."""


@value
class Unsubscribe:
    id: int
    channel: str


@value
class Publish:
    id: int
    channel: str
    data: bytes
    idempotency_key: str | None = None


@value
class History:
    id: int
    channel: str
    limit: int | None = None
    since: StreamPosition | None = None
    reverse: bool = False


@value
class Presence:
    id: int
    channel: str


@value
class PresenceStats:
    id: int
    channel: str


@value
class Ping:
    id: int


@value
class Refresh:
    id: int
    token: str


Command: TypeAlias = (
    Connect
    | Subscribe
    | Unsubscribe
    | Publish
    | History
    | Presence
    | PresenceStats
    | Ping
    | Refresh
)


@value
class CommandRejected:
    """A line that named a valid id but could not be turned into a command.

    The server answers it with an error reply and keeps the connection open.
    """

    id: int
    code: int
    message: str
    extra: dict[str, object] = field(default_factory=dict)
