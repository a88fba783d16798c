"""Hot-path metric updates, tallied in plain numbers and added to Prometheus when it is read.

Why: ``prometheus_client`` takes a lock for every increment, and a histogram's
``observe`` also walks its buckets in Python and checks observability each time.
A publish touched seven such values (command count and duration, deliveries,
publications, delivery latency, broker operations, written frames) — about
3 µs of each publish, a fifth of its Python. Here an update is a dict update.

The tallies are added to the metrics when the registry is collected (a scrape,
the dashboard's stats, ``get_sample_value``): :class:`TallyCollector` is the
registry's first collector, so it applies them before any metric is read. A
reader never sees a stale value, and nothing runs between reads. Everything
here runs on the event loop's thread, as the scrape does.

Histograms are flushed through ``prometheus_client``'s own per-bucket values
(``_upper_bounds``, ``_buckets``, ``_sum``): the library has no public "add
``n`` observations to this bucket", and prometheus_client is pinned
(pyproject.toml); tests/observability/test_metrics_tally.py compares the result
with the library's own ``observe`` for the same values. See docs/decisions/0005.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["Tally", "TallyCollector"]


class Tally:
    """Counter increments and histogram observations not yet added to their metrics."""

    __slots__ = ("_counts", "_observed")

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        """Counter child -> amount to add."""
        self._observed: dict[Any, tuple[tuple[float, ...], list[float]]] = {}
        """Histogram child -> (its upper bounds, [sum, count per bucket ...])."""

    def inc(self, counter: Any, amount: float = 1) -> None:
        """``counter.inc(amount)``, applied at the next :meth:`flush`."""
        counts = self._counts
        if counter in counts:
            counts[counter] += amount
        else:
            counts[counter] = amount

    def observe(self, histogram: Any, value: float) -> None:
        """``histogram.observe(value)``, applied at the next :meth:`flush`."""
        entry = self._observed.get(histogram)
        if entry is None:
            bounds = tuple(histogram._upper_bounds)
            entry = self._observed[histogram] = (bounds, [0.0] * (len(bounds) + 1))
        bounds, tally = entry
        tally[0] += value
        # The first bucket whose bound is >= value: prometheus_client's ``value <= bound``.
        tally[1 + bisect_left(bounds, value)] += 1

    def flush(self) -> None:
        """Add everything tallied to the metrics."""
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        for histogram, (_, tally) in observed.items():
            histogram._sum.inc(tally[0])
            for bucket, count in zip(histogram._buckets, tally[1:], strict=True):
                if count:
                    bucket.inc(count)


class TallyCollector(Collector):
    """Registered first in a registry: flushes the tally whenever the registry is read."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        self._tally.flush()
        return iter(())
