"""The order of a connection's pipelined replies (client.py).

A publish handed to a pipelining broker is answered whenever the broker answers
it, but its reply must reach the client in command order, after the replies of
every earlier command. A :class:`ReplyQueue` keeps one place per unanswered
publish, in command order, and gives back the replies that are ready with none
unready before them. It exists only while a connection has publishes in flight.

Pipelined publishes
-------------------
With a broker that fixes a publish's place in its order when called (the
Node's ``pipelines_publishes``: Redis), waiting for each publish's broker reply
before handing over the next would cost a round trip per publish and a write
per reply. Instead:

1. A publish is handed to the broker at once, in the call
   (``Node.publish_nowait``: no coroutine, no task), so the broker takes one
   connection's publishes in command order (per-channel order holds); a
   callback on the broker's future answers it. ``handle_command`` returns at
   once, and the transport reads on. (With tracing, a task per publish runs
   the traced path; tasks start in creation order, so the order holds too.)
2. Its reply gets a place in the client's :class:`ReplyQueue` when the command arrives
   and is queued when it and every reply before it are ready: replies come
   in command order, several per frame.
3. Any other command first waits until every earlier publish is answered
   (a barrier): a history, presence or subscribe sees the client's own
   publications, and its reply comes after theirs.
4. At most ``client.MAX_PIPELINED_PUBLISHES`` are unanswered; the next publish
   waits for room, and while it waits the transport reads nothing more, so a
   flood is held back as before. Rate limits count each command as it arrives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.messages import StreamPosition

__all__ = ["PendingReply", "PublishOutcome", "ReplyQueue", "position_result", "publish_reply"]

PublishOutcome = StreamPosition | dict[str, Any] | ErrorCode | BaseException
"""How a publish ended: its position (or result), the code it was refused with, or what
it raised."""


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


def position_result(position: StreamPosition) -> dict[str, Any]:
    """A publish reply's result: where the publication is in its channel's history."""
    if not position.offset:
        return {}
    return {"offset": position.offset, "epoch": position.epoch}


def publish_reply(cid: int, outcome: PublishOutcome) -> tuple[bytes, int]:
    """The reply to publish command ``cid`` that ended with ``outcome``, and its error code
    (0: published). A BrokerError is 113; any other exception — a bug, a cancellation —
    is answered 100 all the same, so that later replies are not held back."""
    if isinstance(outcome, ErrorCode):
        return codec.encode_error_reply(cid, outcome, outcome.description), outcome
    if isinstance(outcome, StreamPosition):
        return codec.encode_reply(cid, position_result(outcome)), 0
    if isinstance(outcome, dict):
        return codec.encode_reply(cid, outcome), 0
    if isinstance(outcome, ProtocolError):
        return codec.encode_error_reply(cid, outcome.code, outcome.message), outcome.code
    code = ErrorCode.BROKER_UNAVAILABLE if isinstance(outcome, BrokerError) else ErrorCode.INTERNAL
    return codec.encode_error_reply(cid, code, code.description), code
