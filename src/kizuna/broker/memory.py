"""The embedded broker: one process, no dependencies, the default.

Publications are delivered synchronously inside :meth:`MemoryBroker.publish`,
so per-channel order is the order of publish calls. History lives in a bounded
deque per channel; a channel whose history expired (``history_ttl``) starts a
new epoch on its next publication, and so does every channel when the process
restarts (epochs are random), which is exactly what lets a client that
recovers against a restarted node learn ``recovered: false`` instead of
receiving a wrong slice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import replace
from typing import Any

from kizuna.core.ports import BrokerEventHandler, HistoryResult, PublishOptions
from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = ["MemoryBroker"]

_IDEMPOTENCY_WINDOW = 300.0  # seconds a publish key is remembered
_SWEEP_INTERVAL = 30.0
_EMPTY_STREAM_TTL = 3600.0


class _Stream:
    __slots__ = ("epoch", "expires_at", "keys", "offset", "publications")

    def __init__(self, size: int) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.publications: deque[Publication] = deque(maxlen=size)
        self.expires_at = 0.0
        self.keys: dict[str, tuple[float, int]] = {}


class MemoryBroker:
    """Broker and PresenceStore in one process's memory."""

    def __init__(self) -> None:
        self._handler: BrokerEventHandler | None = None
        self._subscribed: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **_: Any) -> MemoryBroker:
        return cls()

    @property
    def pipelines_publishes(self) -> bool:
        """No: a publish completes in the call (nothing to overlap)."""
        return False

    @property
    def publishes_in_call(self) -> bool:
        """Yes: :meth:`publish_now` stores and delivers before it returns."""
        return True

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def healthy(self) -> bool:
        return self._handler is not None

    # --- pub/sub -------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        return self._publish(channel, pub, options)

    def publish_now(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> StreamPosition:
        return self._publish(channel, pub, options)

    def publish_nowait(
        self, channel: str, pub: Publication, options: PublishOptions
    ) -> asyncio.Future[StreamPosition]:
        future: asyncio.Future[StreamPosition] = asyncio.get_running_loop().create_future()
        future.set_result(self._publish(channel, pub, options))
        return future

    def _publish(self, channel: str, pub: Publication, options: PublishOptions) -> StreamPosition:
        epoch = ""
        if options.history_size > 0:
            stream = self._live_stream(channel, options.history_size, create=True)
            assert stream is not None
            now = time.monotonic()
            key = options.idempotency_key
            if key is not None:
                seen = stream.keys.get(key)
                if seen is not None and seen[0] > now:
                    return StreamPosition(seen[1], stream.epoch)
            stream.offset += 1
            pub = replace(pub, offset=stream.offset)
            stream.publications.append(pub)
            stream.expires_at = now + options.history_ttl if options.history_ttl else 0.0
            if key is not None:
                stream.keys[key] = (now + _IDEMPOTENCY_WINDOW, stream.offset)
            epoch = stream.epoch
        if self._handler is not None and channel in self._subscribed:
            self._handler.handle_publication(channel, pub, epoch)
        return StreamPosition(pub.offset, epoch)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._subscribed:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None and channel in self._subscribed:
            self._handler.handle_leave(channel, info)

    # --- history -------------------------------------------------------------------------

    def _live_stream(self, channel: str, size: int = 0, *, create: bool = False) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None and stream.expires_at and stream.expires_at <= time.monotonic():
            del self._streams[channel]
            stream = None
        if stream is None and create:
            stream = self._streams[channel] = _Stream(size)
        elif stream is not None and create and stream.publications.maxlen != size:
            stream.publications = deque(stream.publications, maxlen=size)
        return stream

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        stream = self._live_stream(channel)
        if stream is None:
            # No history yet (or it expired): a fresh epoch, which never matches an old
            # one. Kept for an hour so that idle subscribers keep a stable position.
            stream = self._streams[channel] = _Stream(1)
            stream.expires_at = time.monotonic() + _EMPTY_STREAM_TTL
        position = StreamPosition(stream.offset, stream.epoch)
        if limit == 0:
            return HistoryResult([], position)
        pubs = list(stream.publications)
        if since is not None:
            if since.epoch != stream.epoch:
                pubs = []
            else:
                pubs = [p for p in pubs if p.offset > since.offset]
        if reverse:
            pubs.reverse()
        if limit is not None:
            pubs = pubs[:limit]
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        self._streams.pop(channel, None)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            self.sweep()

    def sweep(self) -> None:
        """Drop expired streams and idempotency keys, so idle channels free their memory."""
        now = time.monotonic()
        for channel, stream in list(self._streams.items()):
            if stream.expires_at and stream.expires_at <= now:
                del self._streams[channel]
            elif stream.keys:
                stream.keys = {k: v for k, v in stream.keys.items() if v[0] > now}

    # --- presence ------------------------------------------------------------------------

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        self._presence.setdefault(channel, {})[info.client] = info

    async def remove_presence(self, channel: str, client_id: str) -> None:
        entries = self._presence.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._presence.get(channel, {}))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        entries = self._presence.get(channel, {})
        return len(entries), len({i.user for i in entries.values()})
