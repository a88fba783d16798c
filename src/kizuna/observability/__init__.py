"""Metrics, logs and traces, attached to the core's hook events.

:class:`Observer` is the NodeEvents a server attaches to its Node: it updates
the Prometheus metrics and writes the log lines. Every metric name and log
event lives in this package, none in the core.
"""

from __future__ import annotations

from kizuna.observability.logging import LogEvents, configure_logging, get_logger
from kizuna.observability.metrics import Metrics

__all__ = ["LogEvents", "Metrics", "Observer", "configure_logging", "get_logger"]


class Observer:
    """NodeEvents for a running server: metrics plus logs."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.logs = LogEvents()
        # The events of every publication go straight to the metrics: no forwarding call
        # of ours in between (one Python call each, several per publication).
        self.command_handled = metrics.command_handled
        self.fanned_out = metrics.fanned_out
        self.frames_written = metrics.frames_written

    def connection_opened(self, transport: str, namespace: str) -> None:
        self.metrics.connection_opened(transport, namespace)
        self.logs.connection_opened(transport, namespace)

    def connection_rejected(self, transport: str, code: int) -> None:
        self.metrics.connection_rejected(transport, code)
        self.logs.connection_rejected(transport, code)

    def connection_closed(self, transport: str, namespace: str, code: int) -> None:
        self.metrics.connection_closed(transport, namespace, code)
        self.logs.connection_closed(transport, namespace, code)

    def slow_client(self, transport: str) -> None:
        self.metrics.slow_client(transport)
        self.logs.slow_client(transport)

    def messages_dropped(self, transport: str, count: int) -> None:
        self.metrics.messages_dropped(transport, count)

    def recovery(self, recovered: bool) -> None:
        self.metrics.recovery(recovered)

    def auth_failed(self, transport: str, code: int) -> None:
        self.metrics.auth_failed(transport, code)
        self.logs.auth_failed(transport, code)

    def broker_operation(self, operation: str, ok: bool) -> None:
        self.metrics.broker_operation(operation, ok)
        if not ok:
            self.logs.broker_operation(operation, ok)

    def limit_refused(self, limit: str) -> None:
        self.metrics.limit_refused(limit)
