"""What the client tells the application: frozen dataclasses, one per kind of event.

A subscription is one ordered stream of :data:`SubscriptionEvent` values
(publications, and the notices that say where the stream had a gap), because
the application needs to know *where* a gap sits among the messages, not
just that one happened somewhere. Connection state changes are
:class:`StateChange` values given to ``on_state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

from kizuna.protocol.messages import ClientInfo, StreamPosition

__all__ = [
    "ConnectionState",
    "HistoryPage",
    "Join",
    "Leave",
    "PresenceCounts",
    "Publication",
    "StateChange",
    "Subscribed",
    "SubscriptionEvent",
    "Unsubscribed",
]


class ConnectionState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class StateChange:
    """The connection moved to ``state``.

    CONNECTING: ``url`` is being tried after ``attempt`` failures in a row.
    CONNECTED: ``client_id`` is the server's id for this connection.
    DISCONNECTED: ``code`` and ``reason`` say why (a server close code, or a
    WebSocket code for what the client saw: 1006 no connection, 1002 the
    server broke the protocol, 1011 no answer to a heartbeat). ``reconnect``
    says whether another attempt follows, after ``delay`` seconds.
    """

    state: ConnectionState
    url: str = ""
    attempt: int = 0
    client_id: str | None = None
    code: int | None = None
    reason: str = ""
    reconnect: bool = False
    delay: float | None = None
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in ``channel``. ``data`` is the decoded JSON value.

    ``offset`` and ``epoch`` are set in channels with history (0 and None otherwise).
    """

    channel: str
    data: Any
    offset: int = 0
    epoch: str | None = None
    info: ClientInfo | None = None

    @property
    def position(self) -> StreamPosition | None:
        """Where this publication sits in its channel's history, if the channel keeps one."""
        if not self.offset or self.epoch is None:
            return None
        return StreamPosition(self.offset, self.epoch)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The subscription is (again) live. Publications after this event follow it in order.

    recovered: everything missed since ``since`` was replayed: the publications
        right after this event are exactly those, then live ones follow.
    gap: publications may have been missed and could not be replayed (the
        channel's history was lost — a restarted memory broker — or no longer
        reaches back far enough, or the channel keeps no history at all). The
        application should reload what it shows (for example from history).
    resubscribed: this follows a reconnect, not the first subscribe.
    """

    channel: str
    recoverable: bool
    position: StreamPosition | None
    since: StreamPosition | None
    resubscribed: bool
    recovered: bool
    gap: bool
    missed: int = 0
    """How many publications the recovery replayed."""


@dataclass(frozen=True, slots=True)
class Join:
    channel: str
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class Leave:
    channel: str
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The subscription ended: the server ended it (``code`` > 0) or the application did (0)."""

    channel: str
    code: int
    reason: str


SubscriptionEvent: TypeAlias = Publication | Subscribed | Join | Leave | Unsubscribed


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Publications read from a channel's history, and the channel's position when read."""

    publications: list[Publication]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PresenceCounts:
    num_clients: int
    num_users: int
