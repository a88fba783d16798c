"""Hot-path metric updates are tallied and reach the registry whenever it is read."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from kizuna.observability.metrics import LATENCY_BUCKETS, MESSAGE_BUCKETS, Metrics
from kizuna.observability.tally import Tally


def sent(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"transport": "websocket"})


def test_written_frames_are_counted_when_the_registry_is_read() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.frames_written("websocket", 6, 3, 60)
    metrics.frames_written("websocket", 1, 1, 5)
    assert sent(registry, "kizuna_messages_sent_total") == 7
    assert sent(registry, "kizuna_frames_sent_total") == 4
    assert sent(registry, "kizuna_bytes_sent_total") == 65
    metrics.frames_written("websocket", 1, 1, 5)  # tallied afresh after a read
    assert sent(registry, "kizuna_frames_sent_total") == 5
    assert sent(registry, "kizuna_frames_sent_total") == 5  # a read adds nothing twice


def test_a_scrape_sees_commands_fanouts_and_broker_calls() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.command_handled("websocket", "publish", 0.002, 0)
    metrics.command_handled("websocket", "publish", 0.0004, 0)
    metrics.fanned_out("chat", 1000, 0.003, None)
    metrics.broker_operation("publish", True)
    text = generate_latest(registry).decode()
    assert 'kizuna_commands_total{method="publish",transport="websocket"} 2.0' in text
    assert (
        'websocket_message_duration_seconds_count{method="publish",transport="websocket"} 2.0'
        in text
    )
    assert 'kizuna_deliveries_total{namespace="chat"} 1000.0' in text
    assert 'kizuna_publications_fanned_out_total{namespace="chat"} 1.0' in text
    assert 'kizuna_delivery_latency_seconds_bucket{le="0.005",namespace="chat"} 1.0' in text
    assert 'kizuna_delivery_latency_seconds_bucket{le="0.0025",namespace="chat"} 0.0' in text
    assert 'kizuna_broker_operations_total{operation="publish"} 1.0' in text


def test_tallied_histograms_match_the_librarys_own_observe() -> None:
    """Bucket edges (a value equal to a bound), the +Inf bucket, zero and the sum."""
    values = [0.0, 0.0005, 0.00051, 0.001, 0.003, 0.1, 0.7, 2.5, 5.0, 9.0, 1e6]
    for buckets in (MESSAGE_BUCKETS, LATENCY_BUCKETS):
        ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
        ours = Histogram("h", "h", buckets=buckets, registry=ours_registry)
        theirs = Histogram("h", "h", buckets=buckets, registry=theirs_registry)
        tally = Tally()
        observed = tally.histogram(ours)
        for value in values:
            observed.add(value)
            theirs.observe(value)
        tally.flush()
        for bound in [*buckets, math.inf]:
            le = "+Inf" if bound == math.inf else str(float(bound))
            assert ours_registry.get_sample_value("h_bucket", {"le": le}) == (
                theirs_registry.get_sample_value("h_bucket", {"le": le})
            ), le
        assert ours_registry.get_sample_value("h_sum") == theirs_registry.get_sample_value("h_sum")
        assert ours_registry.get_sample_value("h_count") == len(values)
        observed.add(0.003)  # tallied afresh after a flush; a flush adds nothing twice
        tally.flush()
        tally.flush()
        assert ours_registry.get_sample_value("h_count") == len(values) + 1
        assert ours_registry.get_sample_value("h_sum") == sum(values) + 0.003


def test_connections_opened_and_closed_reach_the_registry_with_one_lookup_per_label_set() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    looked_up: list[tuple[str, ...]] = []
    for metric in (metrics.connections, metrics.active, metrics.disconnections, metrics.errors):
        original = metric.labels

        def counting(*labels: str, _original: Any = original) -> Any:
            looked_up.append(labels)
            return _original(*labels)

        metric.labels = counting  # type: ignore[method-assign]
    for _ in range(5):
        metrics.connection_opened("websocket", "chat")
    for _ in range(3):
        metrics.connection_closed("websocket", "chat", 3000)
    metrics.connection_rejected("websocket", 103)
    metrics.connection_rejected("websocket", 103)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"transport": "websocket", **labels})

    assert value("websocket_connections_total", status="accepted") == 5
    assert value("websocket_connections_total", status="rejected") == 2
    assert value("websocket_active_connections", namespace="chat") == 2
    assert value("websocket_disconnections_total", code="3000") == 3
    assert value("websocket_errors_total", code="103") == 2
    metrics.connection_closed("websocket", "chat", 3000)  # tallied afresh after a read
    assert value("websocket_active_connections", namespace="chat") == 1
    assert sorted(looked_up) == sorted(
        [
            ("websocket", "accepted"),
            ("websocket", "chat"),
            ("websocket", "3000"),
            ("websocket", "rejected"),
            ("websocket", "103"),
        ]
    )
