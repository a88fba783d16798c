"""What the core needs to know from configuration, as frozen dataclasses.

``kizuna.config`` reads TOML, environment and flags and produces these; the
core never reads configuration sources itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NamespaceOptions", "NodeOptions", "default_namespaces"]


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """Rules for every channel ``<namespace>:<name>``.

    history_size: publications kept per channel; 0 keeps no history (and so no recovery).
    history_ttl: seconds a channel's history lives after its last publication; 0 = forever.
    drop_oldest: the slow-consumer policy (see the field).
    presence: track who is subscribed.
    join_leave: push join and leave events to subscribers.
    allow_publish: clients may publish (the server API always may).
    allow_anonymous: connections without a token may subscribe (and publish if allowed).
    allow_history: clients may ask for history.
    """

    history_size: int = 100
    history_ttl: float = 300.0
    presence: bool = True
    join_leave: bool = True
    allow_publish: bool = True
    allow_anonymous: bool = False
    allow_history: bool = True
    drop_oldest: bool = False
    """Slow-consumer policy. False (default): a subscriber whose queue overflows is
    disconnected with 3002 and recovers from history. True: the oldest queued
    publications of this namespace are dropped instead — for channels where only
    the latest state matters (prices, positions)."""

    @property
    def recoverable(self) -> bool:
        return self.history_size > 0


def default_namespaces() -> dict[str, NamespaceOptions]:
    """``chat`` (history, presence, join/leave); ``notifications`` (history, server-published)."""
    return {
        "chat": NamespaceOptions(),
        "notifications": NamespaceOptions(
            presence=False, join_leave=False, allow_publish=False, history_size=50
        ),
    }


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Limits and timings of one node. Each 0 means "no limit" unless said otherwise."""

    namespaces: dict[str, NamespaceOptions] = field(default_factory=default_namespaces)
    max_message_size: int = 65536
    """Largest inbound frame, in bytes; larger frames close with 4004."""
    client_queue_max_bytes: int = 4 * 1024 * 1024
    """Outbound bytes queued for one connection before it is disconnected as slow (3002)."""
    connect_timeout: float = 10.0
    """Seconds a connection may stay without a connect command (3007)."""
    max_channels_per_connection: int = 128
    max_connections: int = 0
    max_connections_per_user: int = 0
    history_max_limit: int = 1000
    """Most publications one history or recovery answer returns."""
    max_connections_per_ip: int = 0
    command_rate: float = 0.0
    """Commands per second one connection may send (a token bucket); 0: no limit.
    Over it a command is answered 111; a client that keeps going is closed with 4005."""
    command_burst: int = 50
    """How many commands the bucket holds: a burst allowed above the rate."""
    token_expiry_grace: float = 10.0
    """Seconds after its token expires that a connection has to refresh before 3006."""
    drain_window: float = 5.0
    """Seconds over which a draining node closes its clients, spread out so that
    they do not all reconnect at once."""
    presence_ttl: float = 60.0
    """Seconds a presence entry lives unless refreshed (Redis broker)."""
    ping_interval: float = 25.0
    """Seconds between heartbeats to a client (WebSocket ping frame / SSE comment)."""
    ping_timeout: float = 10.0
    """Seconds a client has to answer a heartbeat before it is closed."""
