"""What a server does once at startup, seen from inside (an in-process server)."""

from __future__ import annotations

import gc

from tests.support.inprocess import serving


async def test_startup_objects_are_frozen_out_of_the_cyclic_gc() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    async with serving():
        # The modules, classes and functions loaded so far: tens of thousands of objects.
        assert gc.get_freeze_count() > 10_000
    gc.unfreeze()  # the test process does not keep them frozen
