"""Typed hook events: the one place the core reports what happens.

Observability (metrics, logs, traces) implements :class:`NodeEvents` and is
attached to a Node; the core calls these methods and knows nothing of
Prometheus or OpenTelemetry. Every method is called once per *event*, never
once per recipient of a fan-out, so implementations stay off the hot path.
The default :class:`NoEvents` does nothing, for tests and embedding.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoEvents", "NodeEvents"]


class NodeEvents(Protocol):
    def connection_opened(self, transport: str, namespace: str) -> None:
        """A client authenticated and is now connected."""

    def connection_rejected(self, transport: str, code: int) -> None:
        """A handshake or connect command was refused with ``code``."""

    def connection_closed(self, transport: str, namespace: str, code: int) -> None:
        """A connected client went away; ``code`` is the disconnect code."""

    def command_handled(self, transport: str, method: str, seconds: float, error: int) -> None:
        """A command was answered; ``error`` is its error code, 0 on success."""

    def fanned_out(self, namespace: str, recipients: int, latency: float) -> None:
        """A publication was queued to this node's ``recipients``; ``latency``
        is seconds since it was published (0 when unknown)."""

    def slow_client(self, transport: str) -> None:
        """A connection's outbound queue overflowed."""

    def frame_written(self, transport: str, messages: int, nbytes: int) -> None:
        """A writer flushed ``messages`` coalesced into one frame of ``nbytes``."""

    def recovery(self, recovered: bool) -> None:
        """A subscribe asked to recover; whether it got everything it missed."""

    def auth_failed(self, transport: str, code: int) -> None:
        """A token was refused."""

    def broker_operation(self, operation: str, ok: bool) -> None:
        """The node called its broker; ``ok`` is False when the broker failed."""


class NoEvents:
    """Reports nowhere."""

    def connection_opened(self, transport: str, namespace: str) -> None:
        pass

    def connection_rejected(self, transport: str, code: int) -> None:
        pass

    def connection_closed(self, transport: str, namespace: str, code: int) -> None:
        pass

    def command_handled(self, transport: str, method: str, seconds: float, error: int) -> None:
        pass

    def fanned_out(self, namespace: str, recipients: int, latency: float) -> None:
        pass

    def slow_client(self, transport: str) -> None:
        pass

    def frame_written(self, transport: str, messages: int, nbytes: int) -> None:
        pass

    def recovery(self, recovered: bool) -> None:
        pass

    def auth_failed(self, transport: str, code: int) -> None:
        pass

    def broker_operation(self, operation: str, ok: bool) -> None:
        pass
