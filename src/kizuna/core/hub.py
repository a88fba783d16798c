"""The hub: which local connections listen to which channel, and the fan-out.

Fan-out is the hot path. A publication arrives once per node, is encoded
once (see Node.handle_publication), and :meth:`ChannelSubscribers.broadcast`
appends the *same bytes object* to every subscriber's outbound queue. No await,
no log line, no span and no allocation per recipient beyond the queue slot.

A subscriber that is still joining (its subscribe is waiting for the broker or
reading history to recover) is *pending*: publications for it are buffered with
their offsets, and the node replays those after the history it read, skipping
what the history already held. This is what makes recovery exact while
publications keep flowing.
"""

from __future__ import annotations

from typing import Protocol

from kizuna.core.channels import namespace_of

__all__ = ["ChannelSubscribers", "Hub", "Subscriber"]


class Subscriber(Protocol):
    """Anything the hub can queue bytes to: a Client, or a long-poll waiter."""

    def enqueue(self, data: bytes) -> None: ...

    def enqueue_droppable(self, data: memoryview) -> None: ...


class ChannelSubscribers:
    """The local subscribers of one channel."""

    __slots__ = ("active", "droppable", "epoch", "namespace", "offset", "pending")

    def __init__(self, namespace: str = "", droppable: bool = False) -> None:
        # dicts used as ordered sets: iteration order is subscription order.
        self.active: dict[Subscriber, None] = {}
        self.pending: dict[Subscriber, list[tuple[int, bytes]]] = {}
        self.namespace = namespace
        """The channel's namespace (a metrics label of every fan-out), worked out once."""
        self.droppable = droppable
        """The namespace's slow-consumer policy is drop-oldest."""
        self.offset = -1
        """The last offset fanned out here (-1: not known yet), to spot gaps and duplicates."""
        self.epoch = ""

    def follows(self, offset: int, epoch: str) -> bool | None:
        """Whether a publication continues this channel's stream here.

        True: deliver it. None: a duplicate (already delivered), drop it. False:
        publications were lost before it. A new epoch that starts at 1 is a
        stream that expired and began again, which loses nothing.
        """
        last = self.offset
        if last < 0 or (epoch != self.epoch and offset == 1) or offset == last + 1:
            self.offset, self.epoch = offset, epoch
            return True
        if epoch == self.epoch and offset <= last:
            return None
        return False

    def note_position(self, offset: int, epoch: str) -> None:
        """Where a subscribe found the stream, unless publications already told us more."""
        if self.offset < 0 or (epoch == self.epoch and offset > self.offset):
            self.offset, self.epoch = offset, epoch

    def __len__(self) -> int:
        return len(self.active) + len(self.pending)

    def broadcast(self, data: bytes, offset: int) -> int:
        """Queue ``data`` to every subscriber; returns how many received it."""
        if self.droppable:
            # One memoryview for all: in a queue it marks what may be dropped when full.
            view = memoryview(data)
            for client in self.active:
                client.enqueue_droppable(view)
        else:
            for client in self.active:
                client.enqueue(data)
        if self.pending:
            item = (offset, data)
            for buffer in self.pending.values():
                buffer.append(item)
        return len(self.active)


class Hub:
    """channel → local subscribers."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[str, ChannelSubscribers] = {}

    def get(self, channel: str) -> ChannelSubscribers | None:
        return self._channels.get(channel)

    def add_pending(self, channel: str, client: Subscriber, droppable: bool = False) -> bool:
        """Start a subscription as pending. Returns True if the channel was new here."""
        subs = self._channels.get(channel)
        created = subs is None
        if subs is None:
            subs = self._channels[channel] = ChannelSubscribers(namespace_of(channel), droppable)
        subs.pending[client] = []
        return created

    def activate(self, channel: str, client: Subscriber) -> list[tuple[int, bytes]]:
        """Make a pending subscription active; returns what was buffered meanwhile."""
        subs = self._channels[channel]
        buffered = subs.pending.pop(client)
        subs.active[client] = None
        return buffered

    def remove(self, channel: str, client: Subscriber) -> bool:
        """Remove a subscription. Returns True if the channel has no local subscriber left."""
        subs = self._channels.get(channel)
        if subs is None:
            return False
        subs.active.pop(client, None)
        subs.pending.pop(client, None)
        if not subs:
            del self._channels[channel]
            return True
        return False

    def channels(self) -> list[str]:
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        subs = self._channels.get(channel)
        return len(subs) if subs is not None else 0

    def __len__(self) -> int:
        return len(self._channels)
