"""Helpers for the client tests: tokens, a recorder of state changes, event collection.

Waiting is always "until this happens, or fail after TIMEOUT": no test sleeps
and hopes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from kizuna.client import Backoff, ConnectionState, Publication, StateChange, Subscription
from kizuna.client.events import SubscriptionEvent
from tests.support.processes import JWT_SECRET

__all__ = ["FAST_BACKOFF", "TIMEOUT", "StateLog", "next_event", "publications", "token"]

TIMEOUT = 10.0
"""Seconds any single expectation may take before the test fails."""

FAST_BACKOFF = Backoff(min_delay=0.05, max_delay=0.3)
"""Keeps reconnecting tests quick; the default policy is tested on its own."""


def token(sub: str = "alice", *, ttl: float = 3600.0, **claims: Any) -> str:
    now = time.time()
    payload = {"sub": sub, "iat": int(now), "exp": now + ttl, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def seconds_to_expiry(encoded: str) -> float:
    """How long ``encoded`` has left: tests wait this out rather than guess at load."""
    claims = jwt.decode(encoded, options={"verify_signature": False})
    return float(claims["exp"]) - time.time()


@dataclass
class StateLog:
    """Records every StateChange with the monotonic time it happened."""

    changes: list[tuple[float, StateChange]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, change: StateChange) -> None:
        self.changes.append((time.monotonic(), change))
        self._changed.set()

    def states(self) -> list[ConnectionState]:
        return [c.state for _, c in self.changes]

    def of(self, state: ConnectionState) -> list[StateChange]:
        return [c for _, c in self.changes if c.state is state]

    async def wait_for(
        self, predicate: Callable[[StateChange], bool], *, after: int = 0, timeout: float = TIMEOUT
    ) -> StateChange:
        """The first change at index ≥ ``after`` that matches ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                for _, change in self.changes[after:]:
                    if predicate(change):
                        return change
                self._changed.clear()
                await self._changed.wait()

    async def wait_state(self, state: ConnectionState, *, after: int = 0) -> StateChange:
        return await self.wait_for(lambda c: c.state is state, after=after)


async def next_event(sub: Subscription, kind: type | tuple[type, ...] = object) -> Any:
    """The next event of ``kind`` from ``sub`` (others are skipped)."""
    async with asyncio.timeout(TIMEOUT):
        async for event in sub:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"{sub.channel}: stream ended before a {kind}")


async def publications(sub: Subscription, count: int) -> tuple[list[Publication], list[Any]]:
    """The next ``count`` publications, and every other event seen on the way."""
    pubs: list[Publication] = []
    others: list[SubscriptionEvent] = []
    async with asyncio.timeout(TIMEOUT):
        async for event in sub:
            if isinstance(event, Publication):
                pubs.append(event)
                if len(pubs) == count:
                    break
            else:
                others.append(event)
    return pubs, others
