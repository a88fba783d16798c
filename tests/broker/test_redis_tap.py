"""Replies read in the transport's callback (broker/redis_tap.py), against a real redis-server.

A tapped redis-py connection must hand over every reply in order — what the
stream already held first — keep writing through redis-py, and say when it
ends: at Redis's EOF, at a loss, or when the callback fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from kizuna.broker import redis_tap
from kizuna.broker.redis_client import open_connection
from kizuna.broker.redis_tap import tap
from tests.support.processes import RedisProcess


class Replies(list[Any]):
    """The callback: collects replies; :meth:`reach` waits for a count of them."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def __call__(self, reply: Any) -> None:
        self.append(reply)
        self._grew.set()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self) < count:
                self._grew.clear()
                await self._grew.wait()


async def connected(server: RedisProcess) -> Connection:
    conn = Connection(host="127.0.0.1", port=server.port)
    await conn.connect()  # type: ignore[no-untyped-call]
    return conn


async def test_replies_come_in_order_and_redis_py_still_writes(redis_server: RedisProcess) -> None:
    conn = await connected(redis_server)
    replies = Replies()
    # Sent before the tap and not read: they reach the callback first, in order.
    await conn.send_command("ECHO", "before-1")
    await conn.send_command("ECHO", "before-2")
    await asyncio.sleep(0.1)  # their replies are in redis-py's stream by now
    ended = await tap(conn, replies)
    transport = conn._writer.transport  # type: ignore[union-attr]
    assert isinstance(transport.get_protocol(), redis_tap._Tap)
    await conn.send_packed_command(  # redis-py's own write path, drain included
        conn.pack_commands([("ECHO", f"after-{i}") for i in range(1000)])
    )
    await conn.send_command("NOSUCHCOMMAND")
    await conn.send_command("PING")
    await replies.reach(1004)
    expected = [b"before-1", b"before-2", *(b"after-%d" % i for i in range(1000))]
    assert replies[:1002] == expected
    assert isinstance(replies[1002], ResponseError)  # an error reply, not raised
    assert replies[1003] == b"PONG"
    assert not ended.done()
    await conn.disconnect()
    async with asyncio.timeout(5):
        await ended  # a connection closed by its owner ends without an error


async def test_redis_closing_the_connection_ends_the_tap(redis_server: RedisProcess) -> None:
    conn = await connected(redis_server)
    await conn.send_command("CLIENT", "SETNAME", "tapped")
    assert await conn.read_response() == b"OK"
    ended = await tap(conn, lambda reply: None)
    async with aioredis.Redis(host="127.0.0.1", port=redis_server.port) as other:
        listed = await other.client_list()
        [victim] = [c for c in listed if c.get("name") == "tapped"]
        await other.client_kill_filter(_id=victim["id"])
    async with asyncio.timeout(5):
        await ended
    await conn.disconnect()


async def test_a_failing_callback_ends_the_tap_with_its_error(redis_server: RedisProcess) -> None:
    conn = await connected(redis_server)

    def refuse(reply: Any) -> None:
        raise RuntimeError(f"cannot take {reply!r}")

    ended = await tap(conn, refuse)
    await conn.send_command("PING")
    async with asyncio.timeout(5):
        try:
            await ended
        except RuntimeError as exc:
            assert "PONG" in str(exc)
        else:
            raise AssertionError("the tap ended without the callback's error")
    await conn.disconnect()


async def test_a_connection_without_hiredis_is_read_the_portable_way(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_tap, "hiredis_source", lambda conn: None)
    conn = await connected(redis_server)
    replies = Replies()
    ended = await tap(conn, replies)
    transport = conn._writer.transport  # type: ignore[union-attr]
    assert not isinstance(transport.get_protocol(), redis_tap._Tap)
    await conn.send_command("ECHO", "one")
    await conn.send_command("NOSUCHCOMMAND")
    await conn.send_command("PING")
    await replies.reach(3)
    assert replies[0] == b"one" and replies[2] == b"PONG"
    assert isinstance(replies[1], ResponseError)
    await conn.disconnect()
    async with asyncio.timeout(5):
        with contextlib.suppress(Exception):
            await ended
    assert ended.done()


class SwallowingConnection(Connection):
    """A connection whose connect returns normally although its task was cancelled, as
    redis-py 8.1's sometimes does (redis_client.open_connection)."""

    async def connect(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        await super().connect()  # type: ignore[no-untyped-call]


async def test_a_cancellation_the_connect_swallowed_is_raised_again(
    redis_server: RedisProcess,
) -> None:
    conn = SwallowingConnection(host="127.0.0.1", port=redis_server.port)
    opening = asyncio.create_task(open_connection(conn))
    await asyncio.sleep(0.01)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await conn.disconnect()
    plain = await connected(redis_server)  # without a cancellation it just connects
    await plain.send_command("PING")
    assert await plain.read_response() == b"PONG"
    await plain.disconnect()
