"""The process under kizuna: its GC pauses, memory, CPU and file descriptors.

A realtime server's latency is the whole process's: while the cyclic GC walks
every object it holds, no message goes anywhere. With 5,000 connections open a
full collection took 120–300 ms (bench/RESULTS.md, fourth sitting), so the
pauses are a metric of their own — ``kizuna_gc_pause_seconds{generation}``,
timed by a ``gc.callbacks`` hook — next to prometheus_client's standard
process, platform and GC collectors (``process_open_fds`` against
``process_max_fds`` is how a node running out of sockets shows).

The GC is one per process, so the pause recorder is too: installed once, read
by every registry that asks (tests build many servers in one process).
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PAUSE_BUCKETS", "GcPauseCollector", "GcPauses", "gc_pauses", "register_runtime"]

PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds; the alert on long pauses reads the 0.1 s bucket."""

GENERATIONS = 3


class GcPauses:
    """Counts every collection's duration into buckets, per generation (a gc callback).

    Runs inside the collector, on whatever thread triggered it, with the GIL held:
    a list update, no lock, no allocation worth the name. Collections do not nest,
    so one start time is enough.
    """

    __slots__ = ("_started", "counts", "sums")

    def __init__(self) -> None:
        self._started = 0.0
        self.counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(GENERATIONS)]
        """Per generation, per bucket (not cumulative); the last is above every bound."""
        self.sums = [0.0] * GENERATIONS

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = perf_counter()
            return
        pause = perf_counter() - self._started
        generation = info["generation"]
        self.counts[generation][bisect_left(PAUSE_BUCKETS, pause)] += 1
        self.sums[generation] += pause


_pauses: GcPauses | None = None


def gc_pauses() -> GcPauses:
    """The process's pause recorder, hooked into the GC on first use."""
    global _pauses
    if _pauses is None:
        _pauses = GcPauses()
        gc.callbacks.append(_pauses)
    return _pauses


class GcPauseCollector(Collector):
    """Exposes a :class:`GcPauses` as the ``kizuna_gc_pause_seconds`` histogram."""

    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "kizuna_gc_pause_seconds",
            "Cyclic garbage collections by generation: how long each stopped the process",
            labels=["generation"],
        )
        bounds = [*(repr(b) for b in PAUSE_BUCKETS), "+Inf"]  # as prometheus_client writes them
        for generation in range(GENERATIONS):
            cumulative = 0
            buckets = []
            for bound, count in zip(bounds, list(self._pauses.counts[generation]), strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric([str(generation)], buckets, self._pauses.sums[generation])
        yield family


def register_runtime(registry: CollectorRegistry) -> None:
    """Add the process metrics to ``registry``: GC pauses and prometheus_client's own."""
    registry.register(GcPauseCollector(gc_pauses()))
    for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(standard)
