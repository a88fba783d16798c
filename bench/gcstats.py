"""kizuna's garbage-collection pauses over one scenario, read from its own /metrics.

Each server is started fresh for a scenario, so ``kizuna_gc_pause_seconds`` at the
end covers that scenario (and the start-up's one collection). A full collection
walks every object the process holds: with many connections open it is the
longest stop the server makes (docs/operations.md), so the report shows it
next to the figures it can explain.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["gc_pauses"]

FULL = "2"
"""The generation of a full collection."""


def gc_pauses(http_base: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """Collections, seconds paused, and the full collections' count, mean and longest bucket.

    None when the server exports no such histogram (a peer, or kizuna with metrics off).
    """
    try:
        with urllib.request.urlopen(f"{http_base}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    full_buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name != "kizuna_gc_pause_seconds":
            continue
        for s in family.samples:
            generation = s.labels["generation"]
            if s.name.endswith("_count"):
                counts[generation] = s.value
            elif s.name.endswith("_sum"):
                sums[generation] = s.value
            elif s.name.endswith("_bucket") and generation == FULL:
                full_buckets.append((float(s.labels["le"]), s.value))
    if not counts:
        return None
    full = counts.get(FULL, 0.0)
    longest = min((le for le, n in full_buckets if n >= full), default=math.inf) if full else None
    return {
        "collections": int(sum(counts.values())),
        "pausedSeconds": sum(sums.values()),
        "full": int(full),
        "fullMeanMs": 1000 * sums.get(FULL, 0.0) / full if full else None,
        "fullLongestAtMostSeconds": longest,
    }
