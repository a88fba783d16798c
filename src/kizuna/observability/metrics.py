"""Prometheus metrics, attached to the core's hook events.

Every metric kizuna exports is defined here and nowhere else, but for the
process's own (GC pauses, memory, CPU, descriptors: runtime.py). Labels stay
low-cardinality — transport, namespace, method, code, operation — never a
channel or a user. Child metrics for the hot path (commands, frame writes,
fan-out, broker calls) are bound once and cached, and their updates are tallied
until the registry is read (tally.py), so an event costs dict lookups and additions.

The guide's five metrics keep their names (``websocket_*``) so its queries,
dashboards and alert rules work as written; they count every transport, with a
``transport`` label to tell them apart. kizuna's own metrics are ``kizuna_*``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kizuna.observability.runtime import register_runtime
from kizuna.observability.tally import Counted, Observed, Tally, TallyCollector

__all__ = ["LATENCY_BUCKETS", "Metrics"]

# ``*_created`` series double the series count and no dashboard or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

MESSAGE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
"""The guide's buckets for command processing, plus 0.5 ms, 2.5 s and 5 s (so a p99
above the guide's 1 s alert threshold is visible, not clamped to 1)."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Publish → deliver latency buckets; the SLO alert uses the 0.1 s bucket."""


class _Gauges(Collector):
    """Gauges read at scrape time from the node (queue depth, channels, readiness)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Any:
        values = self._read()
        yield GaugeMetricFamily(
            "kizuna_client_queue_bytes",
            "Bytes waiting in outbound queues, summed over connections",
            value=values.get("queue_bytes", 0.0),
        )
        yield GaugeMetricFamily(
            "kizuna_channels_active",
            "Channels with at least one subscriber on this node",
            value=values.get("channels", 0.0),
        )
        yield GaugeMetricFamily(
            "kizuna_broker_up",
            "1 when the broker is reachable, 0 when not",
            value=values.get("broker_up", 0.0),
        )


class Metrics:
    """Implements core.events.NodeEvents by updating Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._tally = Tally()
        r.register(TallyCollector(self._tally))  # before the metrics: read after its flush
        register_runtime(r)  # GC pauses, process memory/CPU/fds, Python version
        self.connections = Counter(
            "websocket_connections",
            "Connection attempts by outcome (accepted or rejected)",
            ["transport", "status"],
            registry=r,
        )
        self.active = Gauge(
            "websocket_active_connections",
            "Connected clients",
            ["transport", "namespace"],
            registry=r,
        )
        self.message_duration = Histogram(
            "websocket_message_duration_seconds",
            "Time to handle one client command",
            ["transport", "method"],
            buckets=MESSAGE_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "websocket_errors",
            "Commands answered with an error, and refused connections, by code",
            ["transport", "code"],
            registry=r,
        )
        self.disconnections = Counter(
            "websocket_disconnections",
            "Connections that ended, by disconnect code",
            ["transport", "code"],
            registry=r,
        )
        self.messages_sent = Counter(
            "kizuna_messages_sent",
            "Messages written to clients (replies and pushes)",
            ["transport"],
            registry=r,
        )
        self.frames_sent = Counter(
            "kizuna_frames_sent",
            "Frames written to clients; messages/frames is the coalescing factor",
            ["transport"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "kizuna_bytes_sent", "Bytes written to clients", ["transport"], registry=r
        )
        self.commands = Counter(
            "kizuna_commands",
            "Client commands handled",
            ["transport", "method"],
            registry=r,
        )
        self.deliveries = Counter(
            "kizuna_deliveries",
            "Publications queued to local subscribers",
            ["namespace"],
            registry=r,
        )
        self.publications = Counter(
            "kizuna_publications_fanned_out",
            "Publications this node fanned out to at least its hub",
            ["namespace"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "kizuna_delivery_latency_seconds",
            "Seconds from publish to fan-out on the delivering node",
            ["namespace"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_clients = Counter(
            "kizuna_slow_client_disconnects",
            "Connections closed because their outbound queue overflowed",
            ["transport"],
            registry=r,
        )
        self.dropped = Counter(
            "kizuna_messages_dropped",
            "Publications dropped from drop-oldest queues of slow subscribers",
            ["transport"],
            registry=r,
        )
        self.recoveries = Counter(
            "kizuna_recoveries",
            "Subscribe-with-recovery outcomes",
            ["result"],
            registry=r,
        )
        self.auth_failures = Counter(
            "kizuna_auth_failures", "Refused tokens", ["transport", "code"], registry=r
        )
        self.broker_operations = Counter(
            "kizuna_broker_operations", "Broker calls", ["operation"], registry=r
        )
        self.broker_errors = Counter(
            "kizuna_broker_errors", "Failed broker calls", ["operation"], registry=r
        )
        self.broker_reconnects = Counter(
            "kizuna_broker_reconnects", "Times the broker connection was re-established", registry=r
        )
        self.limit_refusals = Counter(
            "kizuna_limit_refusals",
            "Things a configured limit refused, by limit",
            ["limit"],
            registry=r,
        )
        # The tallies of the hot path's labelled children, per label set (tally.py).
        self._writes: dict[str, tuple[Counted, Counted, Counted]] = {}
        self._fanouts: dict[str, tuple[Counted, Counted, Observed, Any]] = {}
        self._commands: dict[tuple[str, str], tuple[Observed, Counted]] = {}
        self._operations: dict[str, Counted] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Counted] = {}

    def prepare(self, transports: list[str], namespaces: list[str]) -> None:
        """Export every known label set at 0 from the start.

        A counter series that appears already at 1 hides its first increase
        from ``rate()`` and ``increase()``; series that exist from the first
        scrape make rates and alerts right from the first event.
        """
        for transport in transports:
            for status in ("accepted", "rejected"):
                self.connections.labels(transport, status)
            self.messages_sent.labels(transport)
            self.frames_sent.labels(transport)
            self.bytes_sent.labels(transport)
            self.slow_clients.labels(transport)
            self.dropped.labels(transport)
        for namespace in namespaces:
            self.deliveries.labels(namespace)
            self.publications.labels(namespace)
            self.delivery_latency.labels(namespace)
        for result in ("recovered", "not_recovered"):
            self.recoveries.labels(result)
        for operation in ("publish", "subscribe", "history"):
            self.broker_operations.labels(operation)
            self.broker_errors.labels(operation)

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        """Export scrape-time gauges read from ``read``."""
        self.registry.register(_Gauges(read))

    # --- NodeEvents ----------------------------------------------------------------------

    def _counted(self, metric: Any, *labels: str) -> Counted:
        """The tally of ``metric.labels(*labels)``, looked up once per label set.

        ``labels()`` validates, locks and hashes on every call; a connection's
        open and close would take four of them (tests/observability/test_metrics_tally.py).
        """
        counted = self._children.get((metric, labels))
        if counted is None:
            counted = self._children[(metric, labels)] = self._tally.counter(metric.labels(*labels))
        return counted

    def connection_opened(self, transport: str, namespace: str) -> None:
        self._counted(self.connections, transport, "accepted").n += 1
        self._counted(self.active, transport, namespace).n += 1

    def connection_rejected(self, transport: str, code: int) -> None:
        self._counted(self.connections, transport, "rejected").n += 1
        self._counted(self.errors, transport, str(code)).n += 1

    def connection_closed(self, transport: str, namespace: str, code: int) -> None:
        self._counted(self.active, transport, namespace).n -= 1
        self._counted(self.disconnections, transport, str(code)).n += 1

    def command_handled(self, transport: str, method: str, seconds: float, error: int) -> None:
        # Every command comes here: the labelled children are looked up once per
        # (transport, method), not twice per command (``labels()`` locks and hashes).
        bound = self._commands.get((transport, method))
        if bound is None:
            bound = self._commands[(transport, method)] = (
                self._tally.histogram(self.message_duration.labels(transport, method)),
                self._tally.counter(self.commands.labels(transport, method)),
            )
        duration, count = bound
        duration.add(seconds)
        count.n += 1
        if error:
            self.errors.labels(transport, str(error)).inc()

    def fanned_out(
        self, namespace: str, recipients: int, latency: float, traceparent: str | None
    ) -> None:
        bound = self._fanouts.get(namespace)
        if bound is None:
            latency_child = self.delivery_latency.labels(namespace)
            bound = self._fanouts[namespace] = (
                self._tally.counter(self.deliveries.labels(namespace)),
                self._tally.counter(self.publications.labels(namespace)),
                self._tally.histogram(latency_child),
                latency_child,
            )
        deliveries, publications, latencies, latency_child = bound
        deliveries.n += recipients
        publications.n += 1
        if latency > 0:
            if traceparent is not None:
                # traceparent is version-traceid-spanid-flags: the exemplar links to the trace.
                latency_child.observe(latency, {"trace_id": traceparent[3:35]})
            else:
                latencies.add(latency)

    def slow_client(self, transport: str) -> None:
        self.slow_clients.labels(transport).inc()

    def messages_dropped(self, transport: str, count: int) -> None:
        self.dropped.labels(transport).inc(count)

    def frames_written(self, transport: str, messages: int, frames: int, nbytes: int) -> None:
        """Count written frames (a node's flush reports all of its frames at once)."""
        bound = self._writes.get(transport)
        if bound is None:
            bound = self._writes[transport] = (
                self._tally.counter(self.messages_sent.labels(transport)),
                self._tally.counter(self.frames_sent.labels(transport)),
                self._tally.counter(self.bytes_sent.labels(transport)),
            )
        sent_messages, sent_frames, sent_bytes = bound
        sent_messages.n += messages
        sent_frames.n += frames
        sent_bytes.n += nbytes

    def recovery(self, recovered: bool) -> None:
        self.recoveries.labels("recovered" if recovered else "not_recovered").inc()

    def auth_failed(self, transport: str, code: int) -> None:
        self.auth_failures.labels(transport, str(code)).inc()

    def broker_operation(self, operation: str, ok: bool) -> None:
        # Once per publish: the labelled child is looked up once per operation.
        counted = self._operations.get(operation)
        if counted is None:
            counted = self._operations[operation] = self._tally.counter(
                self.broker_operations.labels(operation)
            )
        counted.n += 1
        if not ok:
            self.broker_errors.labels(operation).inc()

    def limit_refused(self, limit: str) -> None:
        self.limit_refusals.labels(limit).inc()
