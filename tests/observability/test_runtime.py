"""Process metrics: GC pauses by generation, and prometheus_client's process collectors."""

from __future__ import annotations

import gc

import pytest

from kizuna.observability import runtime
from kizuna.observability.metrics import Metrics
from kizuna.observability.runtime import GcPauseCollector, GcPauses
from kizuna.observability.stats import snapshot


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def test_a_full_collection_is_counted_with_its_duration() -> None:
    metrics = Metrics()
    count = sample(metrics, "kizuna_gc_pause_seconds_count", generation="2")
    total = sample(metrics, "kizuna_gc_pause_seconds_sum", generation="2")
    gc.collect()
    assert sample(metrics, "kizuna_gc_pause_seconds_count", generation="2") >= count + 1
    assert sample(metrics, "kizuna_gc_pause_seconds_sum", generation="2") > total
    inf = sample(metrics, "kizuna_gc_pause_seconds_bucket", generation="2", le="+Inf")
    assert inf == sample(metrics, "kizuna_gc_pause_seconds_count", generation="2")


def test_pauses_land_in_cumulative_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.030, 20.0, 20.0004, 30.0, 33.0])
    monkeypatch.setattr(runtime, "perf_counter", lambda: next(clock))
    pauses = GcPauses()
    for generation in (1, 1, 0):  # 30 ms and 0.4 ms in generation 1; 3 s in generation 0
        pauses("start", {"generation": generation})
        pauses("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    (family,) = GcPauseCollector(pauses).collect()
    got = {
        (s.name, s.labels["generation"], s.labels.get("le")): s.value
        for s in family.samples
        if s.labels["generation"] in ("0", "1")
    }
    assert got[("kizuna_gc_pause_seconds_bucket", "1", "0.001")] == 1
    assert got[("kizuna_gc_pause_seconds_bucket", "1", "0.025")] == 1
    assert got[("kizuna_gc_pause_seconds_bucket", "1", "0.05")] == 2
    assert got[("kizuna_gc_pause_seconds_bucket", "1", "+Inf")] == 2
    assert got[("kizuna_gc_pause_seconds_count", "1", None)] == 2
    assert got[("kizuna_gc_pause_seconds_sum", "1", None)] == pytest.approx(0.0304)
    assert got[("kizuna_gc_pause_seconds_bucket", "0", "2.5")] == 0  # longer than every bound
    assert got[("kizuna_gc_pause_seconds_bucket", "0", "+Inf")] == 1


def test_the_gc_is_hooked_once_however_many_registries() -> None:
    Metrics()
    Metrics()
    assert sum(isinstance(c, GcPauses) for c in gc.callbacks) == 1


def test_process_metrics_are_exported() -> None:
    metrics = Metrics()
    assert sample(metrics, "process_open_fds") > 0
    assert sample(metrics, "process_max_fds") >= sample(metrics, "process_open_fds")
    assert sample(metrics, "process_resident_memory_bytes") > 0
    assert sample(metrics, "python_gc_collections_total", generation="0") >= 0


def test_the_dashboard_snapshot_carries_the_process_figures() -> None:
    metrics = Metrics()
    gc.collect()
    snap = snapshot(metrics.registry)
    assert snap["gauges"]["rss_bytes"] == sample(metrics, "process_resident_memory_bytes")
    assert 0 < snap["gauges"]["open_fds"] <= snap["gauges"]["max_fds"]
    full = sample(metrics, "kizuna_gc_pause_seconds_count", generation="2")
    assert snap["totals"]["gc_full_collections"] == full >= 1
    paused = sum(
        sample(metrics, "kizuna_gc_pause_seconds_sum", generation=g) for g in ("0", "1", "2")
    )
    assert snap["totals"]["gc_paused_seconds"] == pytest.approx(paused)
