"""One channel subscription: its position in the channel and its stream of events.

The connection (``connection.py``) feeds a subscription from its reader,
synchronously and in wire order; the application consumes it either with a
handler (called for each event, one at a time, in order) or as an async
iterator. Feeding never awaits, so a slow application never stalls the reader
and with it every other channel; the price is a queue that grows while the
application does not keep up.

The subscription remembers the position of the last publication it delivered
(offset, epoch). After a reconnect the client subscribes again *from that
position*, and the server either replays exactly what was missed or says it
cannot (a :class:`~kizuna.client.events.Subscribed` event with ``gap=True``).
A publication at or before the position is a duplicate and is dropped, so a
replay that overlaps what was already delivered never shows a message twice.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from kizuna.client.errors import ClientError
from kizuna.client.events import (
    Join,
    Leave,
    Publication,
    Subscribed,
    SubscriptionEvent,
    Unsubscribed,
)
from kizuna.client.frames import SubscribeResult
from kizuna.protocol.messages import StreamPosition

if TYPE_CHECKING:
    from kizuna.client.connection import Client

__all__ = ["Handler", "Subscription", "SubscriptionState"]

log = logging.getLogger("kizuna.client")

Handler = Callable[[SubscriptionEvent], Awaitable[None] | None]


class SubscriptionState(Enum):
    SUBSCRIBING = "subscribing"
    """Waiting for the server (first subscribe, or again after a reconnect)."""
    SUBSCRIBED = "subscribed"
    ENDED = "ended"
    """Unsubscribed by the application or the server, or the client stopped."""


class Subscription:
    """A channel subscription. Iterate it (``async for event in sub``) or give it a handler."""

    def __init__(
        self,
        client: Client,
        channel: str,
        handler: Handler | None = None,
        since: StreamPosition | None = None,
    ) -> None:
        self.channel = channel
        self.state = SubscriptionState.SUBSCRIBING
        self.position: StreamPosition | None = since
        """Position of the last publication delivered (or of the channel when subscribed)."""
        self.recoverable = False
        self._client = client
        self._handler = handler
        self._events: deque[SubscriptionEvent] = deque()
        self._wakeup = asyncio.Event()
        self._ended = False
        self._end_error: BaseException | None = None
        self._ever_subscribed = False
        self._since_sent: StreamPosition | None = None
        self.retries = 0
        """Transient subscribe errors in a row on the current connection."""
        self.sent_in: object | None = None
        """The connection the last subscribe command went out on (never twice on one)."""
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._dispatcher: asyncio.Task[None] | None = None
        if handler is not None:
            self._dispatcher = loop.create_task(self._dispatch(handler))

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self.state.value} at {self.position}>"

    # --- what the application uses ------------------------------------------------------

    def __aiter__(self) -> Subscription:
        if self._handler is not None:
            raise ClientError("this subscription has a handler; it cannot also be iterated")
        return self

    async def __anext__(self) -> SubscriptionEvent:
        return await self._next()

    async def unsubscribe(self) -> None:
        """Stop receiving; the iterator ends after the events already queued."""
        await self._client.unsubscribe(self.channel)

    # --- fed by the connection (synchronous, in wire order) -----------------------------

    def subscribe_params(self) -> dict[str, Any]:
        """The params of the next subscribe command: recover from the position when there is one."""
        params: dict[str, Any] = {"channel": self.channel}
        since = self.position if (self.recoverable or not self._ever_subscribed) else None
        self._since_sent = since
        if since is not None:
            params["since"] = {"offset": since.offset, "epoch": since.epoch}
        return params

    def on_subscribed(self, result: SubscribeResult) -> None:
        """The server accepted the subscribe: announce it, replay recovered publications."""
        since = self._since_sent
        resubscribed = self._ever_subscribed
        recovered = result.recovered and since is not None
        gap = (since is not None and not recovered) or (resubscribed and not result.recoverable)
        self.recoverable = result.recoverable
        self.state = SubscriptionState.SUBSCRIBED
        self.retries = 0
        self._ever_subscribed = True
        if not recovered:
            self.position = result.position
        self._push(
            Subscribed(
                self.channel,
                result.recoverable,
                result.position,
                since,
                resubscribed,
                recovered,
                gap,
                len(result.publications) if recovered else 0,
            )
        )
        for pub in result.publications:
            self.on_publication(pub)
        if result.position is not None:
            self.position = result.position
        if not self._ready.done():
            self._ready.set_result(None)

    def on_publication(self, pub: Publication) -> bool:
        """Deliver ``pub`` unless it is a duplicate. False: it lies past a hole in the stream.

        Offsets are consecutive within an epoch, so a publication more than one
        past the position means some were skipped (the server shed them from a
        slow connection, say). It is not delivered; the caller subscribes again
        from the position, which replays the hole or reports a gap.
        """
        position = self.position
        if pub.offset and pub.epoch is not None and position is not None:
            if pub.epoch == position.epoch:
                if pub.offset <= position.offset:
                    log.debug("dropped duplicate publication %s@%s", self.channel, pub.offset)
                    return True
                if pub.offset > position.offset + 1:
                    return False
            elif pub.offset > 1:  # a new epoch, but not from its start
                return False
        if pub.offset and pub.epoch is not None:
            self.position = StreamPosition(pub.offset, pub.epoch)
        self._push(pub)
        return True

    def on_join(self, event: Join | Leave) -> None:
        self._push(event)

    def on_connection_lost(self) -> None:
        if self.state is SubscriptionState.SUBSCRIBED:
            self.state = SubscriptionState.SUBSCRIBING
        self.retries = 0
        self.sent_in = None

    def on_rejected(self, error: BaseException) -> None:
        """The first subscribe failed: ``subscribe()`` raises ``error``; nothing was delivered."""
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: subscribe() may have timed out already
        self.end(None, announce=None)

    def end(self, error: BaseException | None, announce: Unsubscribed | None) -> None:
        """No more events: after ``announce`` (if any) the stream ends, raising ``error`` if set."""
        if self._ended:
            return
        if announce is not None:
            self._push(announce)
        self.state = SubscriptionState.ENDED
        self._ended = True
        self._end_error = error
        self._wakeup.set()
        if not self._ready.done():
            self._ready.set_exception(error or ClientError(f"{self.channel!r} unsubscribed"))
            self._ready.exception()  # retrieved: nobody may be waiting for it

    @property
    def ever_subscribed(self) -> bool:
        return self._ever_subscribed

    @property
    def ready(self) -> asyncio.Future[None]:
        return self._ready

    # --- delivery -----------------------------------------------------------------------

    def _push(self, event: SubscriptionEvent) -> None:
        if self._ended:
            return
        self._events.append(event)
        self._wakeup.set()

    async def _next(self) -> SubscriptionEvent:
        while not self._events:
            if self._ended:
                if self._end_error is not None:
                    raise self._end_error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._events.popleft()

    async def _dispatch(self, handler: Handler) -> None:
        while True:
            try:
                event = await self._next()
            except (StopAsyncIteration, ClientError):
                return
            try:
                outcome = handler(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # one bad event must not end the subscription
                log.exception("subscription handler for %r failed", self.channel)

    async def drained(self) -> None:
        """Wait until a handler has seen every event (the stream must have ended)."""
        if self._dispatcher is not None:
            await self._dispatcher
