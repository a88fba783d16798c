"""How the Redis broker talks to Redis: its options, its clients, and error translation.

Options ride in the broker URL's query string, because ``--broker`` /
``KIZUNA_BROKER`` is the one place an operator configures the broker
(``redis://redis:6379/0?prefix=app1&ping_interval=2``). Query parameters that
are not kizuna options go to redis-py unchanged (``ssl_ca_certs``, ...).

Every redis-py call the broker makes goes through :class:`Calls`, which is
where third-party errors stop: connection failures and timeouts become
:class:`BrokerUnavailable` (retry later), any other Redis error
:class:`BrokerError`, always ``from`` the original.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, fields
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kizuna.exceptions import BrokerError, BrokerUnavailable, ConfigError

__all__ = ["UNAVAILABLE", "Calls", "RedisOptions", "connect", "open_connection"]

_T = TypeVar("_T")

UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,  # a replica promoted while we wrote to the old primary
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    OSError,
    TimeoutError,
)
"""Errors that mean "Redis cannot be reached right now", as opposed to "Redis said no"."""

_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLEANS.update({"0": False, "false": False, "no": False, "off": False})


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Settings of the Redis broker; each may be given in the URL query (``?prefix=app1``)."""

    prefix: str = "kizuna"
    """Prefix of every key and channel name, so several deployments can share one Redis."""
    sharded_pubsub: bool | None = None
    """SSUBSCRIBE/SPUBLISH (Redis 7+). None: on for ``redis+cluster://``, off otherwise."""
    max_connections: int = 64
    """Command connections (per Redis server); callers wait for a free one."""
    socket_timeout: float = 5.0
    """Seconds a command may take before it fails with BrokerUnavailable."""
    connect_timeout: float = 2.0
    """Seconds to establish a connection."""
    start_timeout: float = 5.0
    """Seconds start() waits for Redis; after that the node starts not-ready and keeps trying."""
    reconnect_min_delay: float = 0.1
    """First Pub/Sub reconnect delay; doubles per failed attempt, with jitter."""
    reconnect_max_delay: float = 5.0
    """Longest Pub/Sub reconnect delay."""
    ping_interval: float = 5.0
    """Pub/Sub keepalive: a connection that did not answer a PING within this is replaced."""
    health_timeout: float = 1.0
    """Seconds healthy() waits for a PING."""
    idempotency_window: float = 300.0
    """Seconds a publish idempotency key is remembered."""
    empty_history_ttl: float = 3600.0
    """Seconds the epoch of a channel that was read but never published to is kept."""
    catch_up_limit: int = 1000
    """Most publications read from a stream to close the gap after a reconnect."""

    @classmethod
    def parse(cls, query: dict[str, str], overrides: dict[str, Any]) -> RedisOptions:
        """Options from the URL query and keyword overrides; every bad value reported at once."""
        defaults = cls()
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        problems = [f"broker: unknown option {name!r}" for name in sorted(set(overrides) - names)]
        for name in sorted(names):
            raw: Any = overrides.get(name, query.get(name))
            if raw is None:
                continue
            try:
                values[name] = _convert(raw, getattr(defaults, name), name == "sharded_pubsub")
            except ValueError as exc:
                problems.append(f"broker: {name}: {exc}")
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def _convert(raw: Any, default: Any, boolean: bool) -> Any:
    if not isinstance(raw, str):
        return raw
    if boolean:
        value = _BOOLEANS.get(raw.lower())
        if value is None:
            raise ValueError(f"expected true or false, got {raw!r}")
        return value
    if isinstance(default, str):
        return raw
    try:
        number: float = int(raw) if isinstance(default, int) else float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if number < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return number


async def open_connection(conn: AbstractConnection) -> None:
    """``conn.connect()``, and a cancellation it swallowed raised again.

    redis-py 8.1's ``connect`` (on CPython 3.11) can return normally although its
    task was cancelled meanwhile — seen when a broker closed while its Pub/Sub
    reader was reconnecting: the reader then waited on the new connection for
    ever, and the broker's close with it (about one close in ten, in
    tests/broker/test_redis_pipeline.py). A task asked to stop stops here.
    """
    await conn.connect()  # type: ignore[no-untyped-call]
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def connect(url: str, overrides: dict[str, Any]) -> tuple[Redis | RedisCluster, RedisOptions]:
    """The client for ``url`` and the broker options it carries (no I/O yet).

    ``redis://``, ``rediss://`` (TLS), ``redis+cluster://`` and ``rediss+cluster://``.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    own = {f.name for f in fields(RedisOptions)}
    options = RedisOptions.parse({k: v for k, v in query.items() if k in own}, overrides)
    scheme, _, variant = parts.scheme.partition("+")
    if scheme not in ("redis", "rediss") or variant not in ("", "cluster"):
        raise ConfigError([f"broker: not a Redis URL: {url!r}"])
    rest = urlencode({k: v for k, v in query.items() if k not in own})
    target = urlunsplit((scheme, parts.netloc, parts.path, rest, ""))
    common: dict[str, Any] = {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        # No blind retries: a retried publish whose reply was lost would publish twice.
        # Callers see BrokerUnavailable and retry with an idempotency key if they care.
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }
    try:
        if variant == "cluster":
            return RedisCluster.from_url(
                target, max_connections=options.max_connections, **common
            ), options
        pool = BlockingConnectionPool.from_url(
            target,
            max_connections=options.max_connections,
            timeout=options.socket_timeout,
            **common,
        )
        return Redis.from_pool(pool), options  # the client owns the pool: aclose() closes it
    except (ValueError, RedisError) as exc:
        raise ConfigError([f"broker: invalid Redis URL {url!r}: {exc}"]) from exc


class Calls:
    """Awaits redis-py calls for the broker: bounded, and with errors translated.

    redis-py's Cluster pools raise when full instead of waiting, so with a Cluster
    client calls wait for one of ``limit`` slots here.
    """

    def __init__(self, limit: int | None) -> None:
        self._gate = asyncio.Semaphore(limit) if limit else None

    async def __call__(self, call: Awaitable[_T]) -> _T:
        try:
            if self._gate is None:
                return await call
            async with self._gate:
                return await call
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise BrokerError(f"redis error: {exc}") from exc
