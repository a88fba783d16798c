"""How long to wait before the next connection attempt: exponential backoff, full jitter.

Why jitter: when a node restarts, every client it served loses its connection
in the same instant. Without jitter they would all come back in the same
instant too, again and again, and the thundering herd would knock the node
(or its replacement) over each time. Spreading each delay uniformly over its
whole range ("full jitter", AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015) spreads the herd out; the floor ``min_delay`` keeps a client
that fails instantly (connection refused) from spinning.

The delay before attempt ``n + 1``, after ``n`` failures in a row (``n`` ≥ 0)::

    ceiling(n) = min(max_delay, min_delay * factor ** n)
    delay(n)   = uniform(min_delay, ceiling(n))

The failure count resets once a connection has stayed up for a while (see
``stable_after`` in :class:`~kizuna.client.Client`), so a client that was
connected for an hour and loses its node comes back within ``min_delay``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]

_MAX_EXPONENT = 64  # factor ** 64 is past any sensible max_delay; avoids float overflow


@dataclass(frozen=True, slots=True)
class Backoff:
    """The reconnect policy. Every field is validated when the policy is built.

    min_delay: seconds; the shortest wait, and the ceiling of the first one.
    max_delay: seconds; no wait is ever longer.
    factor: how much the ceiling grows after each failure (≥ 1).
    max_attempts: give up after this many failed attempts in a row; None: never give up.
    """

    min_delay: float = 0.5
    max_delay: float = 20.0
    factor: float = 2.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.min_delay >= 0:
            problems.append("min_delay must be ≥ 0")
        if not self.max_delay >= self.min_delay:
            problems.append("max_delay must be ≥ min_delay")
        if not self.factor >= 1:
            problems.append("factor must be ≥ 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            problems.append("max_attempts must be ≥ 1 or None")
        if problems:
            raise ValueError("invalid backoff: " + "; ".join(problems))

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row."""
        if failures < 0:
            raise ValueError("failures must be ≥ 0")
        growth = self.factor ** min(failures, _MAX_EXPONENT)
        return min(self.max_delay, self.min_delay * growth)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """A random wait in ``[min_delay, ceiling(failures)]``."""
        return (rng or _RANDOM).uniform(self.min_delay, self.ceiling(failures))

    def gives_up(self, failures: int) -> bool:
        """Whether ``failures`` failed attempts in a row exhaust ``max_attempts``."""
        return self.max_attempts is not None and failures >= self.max_attempts


_RANDOM = random.Random()
