"""Written frames are tallied per loop turn and added to the counters once."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from kizuna.observability.metrics import Metrics


def sent(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"transport": "websocket"})


async def test_frames_of_one_turn_reach_the_counters_at_its_end() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for nbytes in (10, 20, 30):
        metrics.frame_written("websocket", 2, nbytes)
    assert sent(registry, "kizuna_frames_sent_total") in (None, 0.0)  # not yet
    await asyncio.sleep(0)  # the end of this loop turn
    assert sent(registry, "kizuna_messages_sent_total") == 6
    assert sent(registry, "kizuna_frames_sent_total") == 3
    assert sent(registry, "kizuna_bytes_sent_total") == 60
    metrics.frame_written("websocket", 1, 5)  # the next turn tallies afresh
    await asyncio.sleep(0)
    assert sent(registry, "kizuna_frames_sent_total") == 4


def test_without_a_loop_frames_are_counted_at_once() -> None:
    registry = CollectorRegistry()
    Metrics(registry).frame_written("websocket", 3, 100)
    assert sent(registry, "kizuna_messages_sent_total") == 3
    assert sent(registry, "kizuna_bytes_sent_total") == 100
