"""Typed hook events: the one place the core reports what happens.

Observability (metrics, logs, traces) implements :class:`NodeEvents` and is
attached to a Node; the core calls these methods and knows nothing of
Prometheus or OpenTelemetry. Every method is called once per *event*, never
once per recipient of a fan-out, so implementations stay off the hot path.
The default :class:`NoEvents` does nothing, for tests and embedding.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoEvents", "NoTracer", "NodeEvents", "Span", "Tracer"]


class NodeEvents(Protocol):
    def connection_opened(self, transport: str, namespace: str) -> None:
        """A client authenticated and is now connected."""

    def connection_rejected(self, transport: str, code: int) -> None:
        """A handshake or connect command was refused with ``code``."""

    def connection_closed(self, transport: str, namespace: str, code: int) -> None:
        """A connected client went away; ``code`` is the disconnect code."""

    def command_handled(self, transport: str, method: str, seconds: float, error: int) -> None:
        """A command was answered; ``error`` is its error code, 0 on success."""

    def fanned_out(
        self, namespace: str, recipients: int, latency: float, traceparent: str | None
    ) -> None:
        """A publication was queued to this node's ``recipients``; ``latency``
        is seconds since it was published (0 when unknown); ``traceparent`` its
        trace, for exemplars."""

    def slow_client(self, transport: str) -> None:
        """A connection's outbound queue overflowed."""

    def messages_dropped(self, transport: str, count: int) -> None:
        """A drop-oldest queue shed ``count`` publications to make room."""

    def frames_written(self, transport: str, messages: int, frames: int, nbytes: int) -> None:
        """Writers sent ``frames`` frames of ``nbytes`` in all, carrying ``messages``
        (coalesced). Reported once per node flush for the frames it wrote, and per
        frame by a connection's writer task."""

    def recovery(self, recovered: bool) -> None:
        """A subscribe asked to recover; whether it got everything it missed."""

    def auth_failed(self, transport: str, code: int) -> None:
        """A token was refused."""

    def broker_operation(self, operation: str, ok: bool) -> None:
        """The node called its broker; ``ok`` is False when the broker failed."""

    def limit_refused(self, limit: str) -> None:
        """A configured limit refused something; ``limit`` names it (see docs/operations.md)."""


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

    def fanned_out(
        self, namespace: str, recipients: int, latency: float, traceparent: str | None
    ) -> None:
        pass

    def slow_client(self, transport: str) -> None:
        pass

    def messages_dropped(self, transport: str, count: int) -> None:
        pass

    def frames_written(self, transport: str, messages: int, frames: int, nbytes: int) -> None:
        pass

    def recovery(self, recovered: bool) -> None:
        pass

    def auth_failed(self, transport: str, code: int) -> None:
        pass

    def broker_operation(self, operation: str, ok: bool) -> None:
        pass

    def limit_refused(self, limit: str) -> None:
        pass


class Span(Protocol):
    """One traced operation. ``traceparent`` (W3C) is what travels to other nodes."""

    @property
    def traceparent(self) -> str | None: ...

    def end(self, error: str | None = None) -> None: ...


class Tracer(Protocol):
    """Starts spans for the core; observability/tracing.py implements it with OpenTelemetry.

    ``kind`` is one of "server", "producer", "consumer", "client", "internal".
    ``parent`` is a W3C traceparent from a message envelope; None continues the
    current context. Called once per operation or per node fan-out, never per recipient.
    """

    def start(
        self,
        name: str,
        kind: str,
        attributes: dict[str, str | int],
        parent: str | None = None,
    ) -> Span: ...


class _NoSpan:
    __slots__ = ()

    @property
    def traceparent(self) -> str | None:
        return None

    def end(self, error: str | None = None) -> None:
        pass


_NO_SPAN = _NoSpan()


class NoTracer:
    """Traces nothing (tracing off). Returns one shared no-op span."""

    def start(
        self,
        name: str,
        kind: str,
        attributes: dict[str, str | int],
        parent: str | None = None,
    ) -> Span:
        return _NO_SPAN
