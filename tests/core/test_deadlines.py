"""Deadlines on one loop timer: order, resolution, cancelling, rescheduling earlier."""

from __future__ import annotations

import asyncio
import gc

from kizuna.core.deadlines import RESOLUTION, Deadlines
from tests.core.test_node import connected, make_node


class Member:
    def __init__(self, name: str, fired: list[tuple[str, float]]) -> None:
        self.name = name
        self.fired = fired

    def deadline_passed(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))


async def test_deadlines_fire_in_order_never_early_and_at_most_a_slot_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fired: list[tuple[str, float]] = []
    start = loop.time()
    for name, delay in [("late", 0.6), ("early", 0.1), ("middle", 0.35), ("twin", 0.1)]:
        deadlines.add(Member(name, fired), delay)
    await asyncio.sleep(0.6 + 2 * RESOLUTION)
    assert sorted(n for n, _ in fired[:2]) == ["early", "twin"]
    assert [n for n, _ in fired[2:]] == ["middle", "late"]
    due = {"early": 0.1, "twin": 0.1, "middle": 0.35, "late": 0.6}
    for name, at in fired:
        assert due[name] <= at - start <= due[name] + RESOLUTION + 0.1, (name, at - start)
    assert len(deadlines) == 0


async def test_a_discarded_deadline_does_not_fire_and_others_still_do() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    fired: list[tuple[str, float]] = []
    gone, kept = Member("gone", fired), Member("kept", fired)
    slot = deadlines.add(gone, 0.1)
    deadlines.add(kept, 0.1)
    deadlines.discard(gone, slot)
    assert len(deadlines) == 1
    await asyncio.sleep(0.1 + 2 * RESOLUTION)
    assert [n for n, _ in fired] == ["kept"]


async def test_an_earlier_deadline_rearms_the_timer() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    fired: list[tuple[str, float]] = []
    deadlines.add(Member("hour", fired), 3600)
    deadlines.add(Member("soon", fired), 0.05)
    await asyncio.sleep(0.05 + 2 * RESOLUTION)
    assert [n for n, _ in fired] == ["soon"]
    assert len(deadlines) == 1
    deadlines.close()
    assert len(deadlines) == 0


async def test_connected_clients_hold_no_timer_of_their_own() -> None:
    """Their tokens' deadlines are set entries on the node's one timer, not a timer each."""

    def timers() -> int:
        return sum(type(o).__name__ == "TimerHandle" for o in gc.get_objects())

    node = await make_node(auth_ttl=3600)
    before = timers()
    clients = [(await connected(node, f"user-{i}"))[0] for i in range(20)]
    assert len(node.deadlines) == 20
    assert timers() - before <= 1  # the node's timer, armed for the earliest slot
    for client in clients:
        await client.close(1000)
    assert len(node.deadlines) == 0
    await node.shutdown()


async def test_a_failing_deadline_is_reported_and_the_others_still_fire() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        deadlines = Deadlines(loop)
        fired: list[tuple[str, float]] = []

        class Broken(Member):
            def deadline_passed(self) -> None:
                raise RuntimeError("a bug")

        deadlines.add(Broken("broken", fired), 0.05)
        for i in range(20):  # in one slot with it, in whatever order the set holds them
            deadlines.add(Member(f"fine-{i}", fired), 0.05)
        await asyncio.sleep(0.05 + 2 * RESOLUTION)
        assert sorted(n for n, _ in fired) == sorted(f"fine-{i}" for i in range(20))
        assert [type(c["exception"]).__name__ for c in reported] == ["RuntimeError"]
    finally:
        loop.set_exception_handler(None)
