"""Presence in Redis: who is subscribed to a channel, across nodes, surviving none that crash.

Per channel a hash (client id → user id) and a zset (client id → expiry, in
Redis server milliseconds, so nodes with skewed clocks agree). Every read first
drops expired entries (redis_scripts.PRESENCE_READ). Each node remembers the
entries *it* added and refreshes them every third of their TTL; a node that
crashes stops refreshing, and its entries expire on their own. The keys
themselves carry a TTL at least as long as their longest entry, so a channel
nobody refreshes leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from kizuna.broker.redis_client import Calls
from kizuna.broker.redis_scripts import (
    PRESENCE_ADD,
    PRESENCE_READ,
    PRESENCE_REMOVE,
    ChannelKeys,
)
from kizuna.exceptions import BrokerError
from kizuna.protocol.messages import ClientInfo

__all__ = ["RedisPresence"]

log = logging.getLogger("kizuna.broker.redis")

DEFAULT_TTL = 60.0
_BATCH = 500  # entries per script call when refreshing


class RedisPresence:
    """The PresenceStore half of the Redis broker."""

    def __init__(self, client: Redis | RedisCluster, prefix: str, calls: Calls) -> None:
        self._prefix = prefix
        self._call = calls
        self._add = client.register_script(PRESENCE_ADD)
        self._remove = client.register_script(PRESENCE_REMOVE)
        self._read = client.register_script(PRESENCE_READ)
        self._local: dict[str, dict[str, tuple[str, float]]] = {}
        """channel → client → (user, ttl): what this node added and keeps alive."""
        self._changed = asyncio.Event()
        self._late_removals: list[tuple[str, str]] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing. Entries stay until their TTL: see RedisBroker.close."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    def _keys(self, channel: str) -> list[str]:
        keys = ChannelKeys.of(self._prefix, channel)
        return [keys.presence, keys.presence_expiry]

    async def add(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Add ``info``; this node refreshes it every ``ttl / 3`` until it is removed.

        ``ttl`` ≤ 0 means the default (60 s): an entry that never expires would
        outlive a crashed node forever.
        """
        ttl = ttl if ttl > 0 else DEFAULT_TTL
        await self._call(
            self._add(keys=self._keys(channel), args=[_ms(ttl), info.client, info.user])
        )
        self._local.setdefault(channel, {})[info.client] = (info.user, ttl)
        self._changed.set()

    async def remove(self, channel: str, client_id: str) -> None:
        entries = self._local.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._local[channel]
        if self._late_removals is not None:
            self._late_removals.append((channel, client_id))
        await self._call(self._remove(keys=self._keys(channel), args=[client_id]))

    async def get(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._call(self._read(keys=self._keys(channel), args=["all"]))
        return {
            flat[i].decode(): ClientInfo(flat[i + 1].decode(), flat[i].decode())
            for i in range(0, len(flat), 2)
        }

    async def stats(self, channel: str) -> tuple[int, int]:
        clients, users = await self._call(self._read(keys=self._keys(channel), args=["stats"]))
        return int(clients), int(users)

    async def _refresh_forever(self) -> None:
        """Refresh this node's entries every third of the shortest TTL among them.

        Entries are written with their full TTL when added, so only entries older
        than the last refresh need refreshing: the clock runs from the last refresh
        (or from the first entry), never from the latest add, which would starve it.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            self._changed.clear()
            if not self._local:
                await self._changed.wait()
                last = loop.time()
                continue
            interval = min(ttl for e in self._local.values() for _, ttl in e.values()) / 3
            wait = last + interval - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                continue  # due now, or an add that may have a shorter TTL: look again
            last = loop.time()
            try:
                await self.refresh()
            except BrokerError as exc:
                log.warning("redis: presence refresh failed: %s", exc)

    async def refresh(self) -> None:
        """Re-add this node's entries; removals that raced with the refresh are replayed.

        A removal whose script ran before the refresh's would otherwise be undone
        by it and linger until its TTL.
        """
        self._late_removals = []
        try:
            calls: list[Any] = []
            for channel, entries in self._local.items():
                keys = self._keys(channel)
                by_ttl: dict[float, list[str]] = {}
                for client, (user, ttl) in entries.items():
                    by_ttl.setdefault(ttl, []).extend((client, user))
                for ttl, pairs in by_ttl.items():
                    for i in range(0, len(pairs), 2 * _BATCH):
                        args: list[str | int] = [_ms(ttl), *pairs[i : i + 2 * _BATCH]]
                        calls.append(self._call(self._add(keys=keys, args=args)))
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            late, self._late_removals = self._late_removals, None
        for channel, client_id in late:
            await self._call(self._remove(keys=self._keys(channel), args=[client_id]))
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)
