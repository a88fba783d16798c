"""Every connection's deadline on one event-loop timer.

Each connection has a deadline for its whole life: first to send its connect
command (3007), then for its token to expire (3006); a detached native WebSocket
also has its next keepalive ping, or its pong's deadline (1011). A ``call_later`` per
connection holds four GC-tracked objects and ~650 bytes for as long as it is
pending (the TimerHandle, its copy of the context, uvloop's UVTimer, the bound
method; measured on uvloop) — about a tenth of an idle connection's Python
memory, and a tenth of what every full GC pass walks (docs/operations.md).

Here a deadline is an entry in a set: deadlines that fall in the same slot of
:data:`RESOLUTION` seconds share one set, and one timer wakes for the earliest
slot. A deadline fires at most :data:`RESOLUTION` late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol

__all__ = ["RESOLUTION", "Deadlines", "Expiring"]

RESOLUTION = 0.25
"""Seconds per slot: how late a deadline may fire."""


class Expiring(Protocol):
    """What a deadline is set for (a Client; a detached WebSocket's keepalive)."""

    def deadline_passed(self) -> None: ...


class Deadlines:
    """Deadlines in slots of :data:`RESOLUTION` seconds, on one loop timer."""

    __slots__ = ("_heap", "_loop", "_slots", "_timer", "_timer_slot")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Expiring]] = {}
        self._heap: list[int] = []
        """The slots in ``_slots``, earliest first."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot: int | None = None

    def __len__(self) -> int:
        return sum(len(members) for members in self._slots.values())

    def add(self, member: Expiring, delay: float) -> int:
        """Call ``member.deadline_passed()`` in ``delay`` seconds; returns the slot to discard."""
        slot = math.ceil((self._loop.time() + delay) / RESOLUTION)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
            heapq.heappush(self._heap, slot)
            if self._timer_slot is None or slot < self._timer_slot:
                self._arm(slot)
        members.add(member)
        return slot

    def discard(self, member: Expiring, slot: int) -> None:
        """Forget ``member``'s deadline in ``slot`` (an emptied slot is dropped when due)."""
        members = self._slots.get(slot)
        if members is not None:
            members.discard(member)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_slot = None
        self._slots.clear()
        self._heap.clear()

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * RESOLUTION, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_slot = None
        now = self._loop.time()
        due: list[Expiring] = []
        heap = self._heap
        while heap and heap[0] * RESOLUTION <= now:
            due.extend(self._slots.pop(heapq.heappop(heap), ()))
        if heap:
            self._arm(heap[0])
        for member in due:
            try:
                member.deadline_passed()
            except Exception as exc:
                # As the loop treats a failing callback of its own: reported, and the
                # other deadlines of the slot still run.
                self._loop.call_exception_handler(
                    {"message": "a deadline callback failed", "exception": exc, "member": member}
                )
