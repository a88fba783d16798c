"""The reconnect delay policy: every delay within its bounds, growth, cap, giving up."""

from __future__ import annotations

import random

import pytest

from kizuna.client import Backoff


def test_defaults_are_the_documented_policy() -> None:
    policy = Backoff()
    assert (policy.min_delay, policy.max_delay, policy.factor, policy.max_attempts) == (
        0.5,
        20.0,
        2.0,
        None,
    )


@pytest.mark.parametrize("failures", [0, 1, 2, 3, 5, 6, 10, 40])
def test_every_delay_lies_between_min_and_the_ceiling(failures: int) -> None:
    policy = Backoff()
    rng = random.Random(failures)
    ceiling = min(20.0, 0.5 * 2**failures)
    delays = [policy.delay(failures, rng) for _ in range(2000)]
    assert all(0.5 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not a sliver of it.
    if ceiling > 0.5:
        spread = (max(delays) - min(delays)) / (ceiling - 0.5)
        assert spread > 0.9


def test_ceiling_doubles_then_stops_at_max() -> None:
    policy = Backoff(min_delay=0.5, max_delay=20.0)
    assert [policy.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 20, 20]


def test_huge_failure_counts_do_not_overflow() -> None:
    assert Backoff().ceiling(100_000) == 20.0


def test_max_attempts_gives_up_after_that_many_failures() -> None:
    policy = Backoff(max_attempts=3)
    assert [policy.gives_up(n) for n in range(5)] == [False, False, False, True, True]
    assert not Backoff().gives_up(10**9)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"min_delay": -1}, "min_delay"),
        ({"min_delay": 5, "max_delay": 1}, "max_delay"),
        ({"factor": 0.5}, "factor"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"min_delay": float("nan")}, "min_delay"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_negative_failure_count_is_a_bug() -> None:
    with pytest.raises(ValueError, match="failures"):
        Backoff().ceiling(-1)
