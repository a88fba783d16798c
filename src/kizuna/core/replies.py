"""The order of a connection's pipelined replies (client.py, "Pipelined publishes").

A publish handed to a pipelining broker is answered whenever the broker answers
it, but its reply must reach the client in command order, after the replies of
every earlier command. A :class:`ReplyQueue` keeps one place per unanswered
publish, in command order, and gives back the replies that are ready with none
unready before them. It exists only while a connection has publishes in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["PendingReply", "ReplyQueue"]


class PendingReply:
    """The place of one pipelined publish's reply: empty until it is answered."""

    __slots__ = ("data", "task")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.task: asyncio.Future[Any] | None = None
        """The publish under way (a task, or the broker's future); held here so that it is
        not garbage-collected."""


class ReplyQueue:
    """Places of the replies to a connection's unanswered publishes, in command order."""

    __slots__ = ("_answered", "_places")

    def __init__(self) -> None:
        self._places: deque[PendingReply] = deque()
        self._answered: asyncio.Future[None] | None = None
        """Resolved when a place is answered; made only while someone waits."""

    def __len__(self) -> int:
        return len(self._places)

    def reserve(self) -> PendingReply:
        """A place for the reply of the command that just arrived, after all the others."""
        place = PendingReply()
        self._places.append(place)
        return place

    def withdraw_last(self) -> None:
        """Give back the place just reserved (the command will not be answered here)."""
        self._places.pop()

    def take_ready(self) -> list[bytes]:
        """The replies that are ready with none unready before them; wakes a waiter."""
        places = self._places
        ready = []
        while places and places[0].data is not None:
            data = places.popleft().data
            assert data is not None
            ready.append(data)
        answered = self._answered
        if answered is not None:
            self._answered = None
            if not answered.done():  # done: its waiter was cancelled
                answered.set_result(None)
        return ready

    async def wait(
        self, most: int, loop: asyncio.AbstractEventLoop, stop: Callable[[], bool]
    ) -> None:
        """Return once at most ``most`` places are unanswered, or ``stop()`` says so."""
        while len(self._places) > most and not stop():
            answered = self._answered
            if answered is None:
                answered = self._answered = loop.create_future()
            await answered
