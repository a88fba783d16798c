"""Hot-path metric updates, tallied in plain numbers and added to Prometheus when it is read.

Why: ``prometheus_client`` takes a lock for every increment, and a histogram's
``observe`` also walks its buckets in Python and checks observability each time.
A publish touched seven such values (command count and duration, deliveries,
publications, delivery latency, broker operations, written frames) — about
3 µs of each publish, a fifth of its Python. Here an update is an addition to
a number the caller holds.

The tallies are added to the metrics when the registry is collected (a scrape,
the dashboard's stats, ``get_sample_value``): :class:`TallyCollector` is the
registry's first collector, so it applies them before any metric is read. A
reader never sees a stale value, and nothing runs between reads. Everything
here runs on the event loop's thread, as the scrape does. The hot path keeps
the :class:`Counted` / :class:`Observed` of each labelled child it updates and
adds to them in place; the tally holds every one handed out and applies them
all on read (a few dozen: one per label set in use).

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

__all__ = ["Counted", "Observed", "Tally", "TallyCollector"]


class Counted:
    """A counter's (or gauge's) increments not yet added to it.

    The hot path adds to :attr:`n` itself (``counted.n += 1``): an attribute
    addition, not a call — a publish makes seven of them.
    """

    __slots__ = ("child", "n")

    def __init__(self, child: Any) -> None:
        self.child = child
        """The labelled ``prometheus_client`` child the amount goes to."""
        self.n: float = 0


class Observed:
    """A histogram's observations not yet added to it: their sum and a count per bucket."""

    __slots__ = ("bounds", "child", "counts", "sum")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self.sum = 0.0
        self.counts = [0] * len(self.bounds)

    def add(self, value: float) -> None:
        """``child.observe(value)``, applied at the next :meth:`Tally.flush`."""
        self.sum += value
        # The first bucket whose bound is >= value: prometheus_client's ``value <= bound``.
        self.counts[bisect_left(self.bounds, value)] += 1


class Tally:
    """Every :class:`Counted` and :class:`Observed` handed out, to be added when read."""

    __slots__ = ("_counted", "_observed")

    def __init__(self) -> None:
        self._counted: dict[Any, Counted] = {}
        self._observed: dict[Any, Observed] = {}

    def counter(self, child: Any) -> Counted:
        """The tally of a counter (or gauge) child: one per child, kept by the caller."""
        counted = self._counted.get(child)
        if counted is None:
            counted = self._counted[child] = Counted(child)
        return counted

    def histogram(self, child: Any) -> Observed:
        """The tally of a histogram child: one per child, kept by the caller."""
        observed = self._observed.get(child)
        if observed is None:
            observed = self._observed[child] = Observed(child)
        return observed

    def flush(self) -> None:
        """Add everything tallied to the metrics."""
        for counted in self._counted.values():
            if counted.n:
                counted.child.inc(counted.n)
                counted.n = 0
        for observed in self._observed.values():
            if not any(observed.counts):
                continue
            child = observed.child
            child._sum.inc(observed.sum)
            for bucket, count in zip(child._buckets, observed.counts, strict=True):
                if count:
                    bucket.inc(count)
            observed.sum = 0.0
            observed.counts = [0] * len(observed.bounds)


class TallyCollector(Collector):
    """Registered first in a registry: flushes the tally whenever the registry is read."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        self._tally.flush()
        return iter(())
