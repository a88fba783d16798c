"""The Redis broker's publish pipeline (broker/redis_pipeline.py) against real redis-servers.

Publishes started together must be applied in the order they were started,
share one connection, answer each with its own position or error, and survive
what happens to that connection: Redis going away, the connection being
killed while idle, the script cache being flushed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from kizuna.broker import redis_pipeline
from kizuna.broker.redis import RedisBroker
from kizuna.broker.redis_pipeline import PublishPipeline
from kizuna.broker.redis_scripts import ChannelKeys
from kizuna.core.ports import PublishOptions
from kizuna.exceptions import BrokerError, BrokerUnavailable
from kizuna.protocol.messages import StreamPosition
from tests.broker.conftest import RedisBrokers
from tests.broker.contract import HISTORY, NO_HISTORY, pub, unique
from tests.support.processes import RedisProcess

StartRedis = Callable[..., RedisProcess]


async def publish_connections(url: str, prefix: str) -> list[int]:
    """Ids of the connections the broker publishes on (by client name)."""
    async with aioredis.from_url(url) as client:
        listed = await client.client_list()
    return [int(c["id"]) for c in listed if c.get("name") == f"{prefix}-publish"]


@pytest.mark.parametrize("options", [HISTORY, NO_HISTORY], ids=["history", "no-history"])
async def test_publishes_started_together_are_applied_in_order_on_one_connection(
    redis_server: RedisProcess, brokers: RedisBrokers, options: PublishOptions
) -> None:
    broker, recorder = await brokers.start(redis_server.url)
    assert broker.pipelines_publishes
    channel = unique()
    await broker.subscribe(channel)
    count = 500
    positions = await asyncio.gather(
        *(broker.publish(channel, pub(b"%d" % i), options) for i in range(count))
    )
    if options is HISTORY:
        offsets = [p.offset for p in positions]
        assert offsets == list(range(1, count + 1))
    await recorder.until(lambda: len(recorder.on(channel)) == count)
    assert [p.data for p, _ in recorder.on(channel)] == [b"%d" % i for i in range(count)]
    assert len(await publish_connections(redis_server.url, brokers.prefix)) == 1


async def test_idempotency_keys_hold_within_one_batch(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, _ = await brokers.start(redis_server.url)
    channel = unique()
    keyed = PublishOptions(history_size=100, history_ttl=60.0, idempotency_key="k")
    positions = await asyncio.gather(*(broker.publish(channel, pub(), keyed) for _ in range(3)))
    assert len(set(positions)) == 1
    assert [p.offset for p in (await broker.history(channel)).publications] == [1]


async def test_an_error_reply_fails_only_its_own_publish(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, _ = await brokers.start(redis_server.url)
    broken, fine = unique(), unique()
    async with aioredis.from_url(redis_server.url) as client:
        await client.set(ChannelKeys.of(brokers.prefix, broken).meta, "not a hash")
    results = await asyncio.gather(
        broker.publish(fine, pub(), HISTORY),
        broker.publish(broken, pub(), HISTORY),
        broker.publish(fine, pub(), HISTORY),
        return_exceptions=True,
    )
    assert isinstance(results[1], BrokerError) and not isinstance(results[1], BrokerUnavailable)
    first, last = results[0], results[2]
    assert isinstance(first, StreamPosition) and isinstance(last, StreamPosition)
    assert (first.offset, last.offset) == (1, 2)


async def test_a_killed_idle_connection_is_replaced_without_a_failure(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, _ = await brokers.start(redis_server.url)
    channel = unique()
    await broker.publish(channel, pub(), HISTORY)
    [connection] = await publish_connections(redis_server.url, brokers.prefix)
    async with aioredis.from_url(redis_server.url) as client:
        await client.client_kill_filter(_id=connection)
    await asyncio.sleep(0.1)  # the broker's loop sees the close
    position = await broker.publish(channel, pub(), HISTORY)
    assert position.offset == 2


async def test_a_flushed_script_fails_one_publish_then_is_loaded_again(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, _ = await brokers.start(redis_server.url)
    channel = unique()
    await broker.publish(channel, pub(), HISTORY)
    async with aioredis.from_url(redis_server.url) as client:
        await client.script_flush()
    with pytest.raises(BrokerUnavailable):  # refused, never applied out of order
        await broker.publish(channel, pub(), HISTORY)
    assert (await broker.publish(channel, pub(), HISTORY)).offset == 2


async def test_publishes_fail_while_redis_is_down_and_work_again_after(
    own_redis: StartRedis, brokers: RedisBrokers
) -> None:
    redis = own_redis()
    broker, _ = await brokers.start(redis.url)
    channel = unique()
    await broker.publish(channel, pub(), HISTORY)
    redis.stop()
    results = await asyncio.gather(
        *(broker.publish(channel, pub(), HISTORY) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, BrokerUnavailable) for r in results), results
    own_redis(redis.port)
    position = await broker.publish(channel, pub(), HISTORY)
    assert position.offset >= 1


async def test_close_fails_what_is_queued(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker: RedisBroker
    broker, _ = await brokers.start(redis_server.url)
    channel = unique()
    queued = [asyncio.ensure_future(broker.publish(channel, pub(), HISTORY)) for _ in range(5)]
    await asyncio.sleep(0)  # handed to the pipeline, not yet written
    await broker.close()
    brokers.started.remove(broker)
    for future in queued:
        with pytest.raises(BrokerUnavailable):
            await future
    with pytest.raises(BrokerUnavailable):
        await broker.publish(channel, pub(), HISTORY)


async def test_a_reply_its_converter_cannot_read_fails_only_its_own_command(
    redis_server: RedisProcess,
) -> None:
    """send(convert=) hands the caller a converted result; a reply it cannot convert is a
    BrokerError for that command alone, and the rest of the batch is answered."""
    pipeline = PublishPipeline(
        lambda: Connection(host="127.0.0.1", port=redis_server.port), timeout=5.0
    )
    try:
        futures = [
            pipeline.send("PING", convert=bytes.decode),
            pipeline.send("PING", convert=int),  # b"PONG" is no number
            pipeline.send("ECHO", "after"),
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await pipeline.close()
    assert results[0] == "PONG"
    assert isinstance(results[1], BrokerError) and not isinstance(results[1], BrokerUnavailable)
    assert isinstance(results[1].__cause__, ValueError)
    assert results[2] == b"after"


async def test_a_batch_redis_does_not_answer_fails_after_the_timeout_and_the_next_goes_on(
    own_redis: StartRedis,
) -> None:
    """One watchdog timer bounds every batch: a batch sent to a silent (stopped) Redis fails
    with BrokerUnavailable between 1 and 1.5 timeouts; the pipeline is not cancelled by it,
    and the next batch, on a new connection, is answered once Redis is back."""
    redis = own_redis()
    pipeline = PublishPipeline(lambda: Connection(host="127.0.0.1", port=redis.port), timeout=0.4)
    assert redis.process is not None
    try:
        assert await pipeline.send("PING") == b"PONG"
        os.kill(redis.process.pid, signal.SIGSTOP)  # connected, alive, silent
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            silent = pipeline.send("ECHO", "lost")
            with pytest.raises(BrokerUnavailable, match=r"did not answer within 0\.4 s"):
                await asyncio.wait_for(silent, 5)
            assert 0.4 <= loop.time() - started < 0.4 * 1.5 + 0.2
            later = pipeline.send("ECHO", "later")  # queued while Redis is still stopped
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        assert await asyncio.wait_for(later, 5) == b"later"
    finally:
        await pipeline.close()


async def test_commands_beyond_the_in_flight_bound_wait_for_room_and_keep_their_order(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_IN_FLIGHT commands wait for replies; the rest are written as replies
    make room, in the order they were sent."""
    monkeypatch.setattr(redis_pipeline, "MAX_IN_FLIGHT", 10)
    pipeline = PublishPipeline(
        lambda: Connection(host="127.0.0.1", port=redis_server.port), timeout=5.0
    )
    waiting: list[int] = []
    on_reply = pipeline._on_reply

    def counting(reply: object) -> None:
        waiting.append(len(pipeline._in_flight))
        on_reply(reply)

    monkeypatch.setattr(pipeline, "_on_reply", counting)
    try:
        replies = await asyncio.gather(*(pipeline.send("ECHO", str(i)) for i in range(250)))
    finally:
        await pipeline.close()
    assert replies == [str(i).encode() for i in range(250)]
    assert max(waiting) == 10  # full, never over
