"""A JSON snapshot of the metrics, for the live dashboard page (``/dashboard``).

The page is for users who have no Grafana yet. It polls ``/dashboard/stats``
once a second and computes rates from the difference between two snapshots,
so the server keeps no history for it. Everything is read from the same
Prometheus registry ``/metrics`` exposes: the page and Grafana can never disagree.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

__all__ = ["quantile", "snapshot"]

_COUNTERS = {
    "websocket_connections_total": "connections",
    "websocket_disconnections_total": "disconnections",
    "websocket_errors_total": "errors",
    "kizuna_messages_sent_total": "messages_sent",
    "kizuna_frames_sent_total": "frames_sent",
    "kizuna_commands_total": "commands",
    "kizuna_deliveries_total": "deliveries",
    "kizuna_publications_fanned_out_total": "publications",
    "kizuna_slow_client_disconnects_total": "slow_clients",
    "kizuna_broker_errors_total": "broker_errors",
    "kizuna_recoveries_total": "recoveries",
    "kizuna_auth_failures_total": "auth_failures",
}
_GAUGES = {
    "kizuna_client_queue_bytes": "queue_bytes",
    "kizuna_channels_active": "channels",
    "kizuna_broker_up": "broker_up",
    "process_resident_memory_bytes": "rss_bytes",
    "process_open_fds": "open_fds",
    "process_max_fds": "max_fds",
}
FULL_COLLECTION = "2"


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` as Prometheus computes it, over cumulative (le, count) pairs."""
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            fraction = (rank - lower_count) / span if span else 0.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return lower_bound


def snapshot(registry: CollectorRegistry) -> dict[str, Any]:
    """Totals by metric (and by transport where it has one), gauges, latency buckets."""
    totals: dict[str, float] = defaultdict(float)
    by_transport: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    active: dict[str, float] = defaultdict(float)
    latency: dict[float, float] = defaultdict(float)
    gauges: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            name = _COUNTERS.get(sample.name)
            if name is not None:
                totals[name] += sample.value
                transport = sample.labels.get("transport")
                if transport:
                    by_transport[transport][name] += sample.value
            elif sample.name == "websocket_active_connections":
                active[sample.labels["transport"]] += sample.value
            elif sample.name == "kizuna_delivery_latency_seconds_bucket":
                latency[float(sample.labels["le"])] += sample.value
            elif sample.name in _GAUGES:
                gauges[_GAUGES[sample.name]] = sample.value
            elif sample.name == "kizuna_gc_pause_seconds_sum":
                totals["gc_paused_seconds"] += sample.value
            elif (
                sample.name == "kizuna_gc_pause_seconds_count"
                and sample.labels["generation"] == FULL_COLLECTION
            ):
                totals["gc_full_collections"] += sample.value
    buckets = sorted(latency.items())
    return {
        "time": time.time(),
        "active_connections": sum(active.values()),
        "active_by_transport": dict(active),
        "totals": dict(totals),
        "by_transport": {t: dict(v) for t, v in by_transport.items()},
        "gauges": gauges,
        # JSON has no infinity: the last bucket's bound travels as the string "+Inf".
        "latency_buckets": [[le if le != float("inf") else "+Inf", n] for le, n in buckets],
        "latency": {
            "p50": quantile(0.5, buckets),
            "p95": quantile(0.95, buckets),
            "p99": quantile(0.99, buckets),
        },
    }
