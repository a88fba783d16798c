"""The broker contract against real Redis, and what only Redis can do: go away and come back.

Everything talks to private redis-servers on free ports (tests/support/processes):
the session's shared one for the contract, and a dedicated one for each test
that stops, restarts or freezes its Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from kizuna.broker import create_broker, redis_tap
from kizuna.broker.redis import RedisBroker
from kizuna.core.ports import PublishOptions
from kizuna.exceptions import BrokerError, BrokerUnavailable, ConfigError
from kizuna.protocol.messages import ClientInfo, Publication, StreamPosition
from tests.broker.conftest import RedisBrokers, RedisClusterProcesses, pubsub_transport
from tests.broker.contract import (
    HISTORY,
    TIMEOUT,
    BrokerContract,
    BrokerUnderTest,
    Recorder,
    pub,
    unique,
)
from tests.support.processes import RedisProcess, free_port

StartRedis = Callable[..., RedisProcess]


class TestRedisBroker(BrokerContract):
    """The contract over classic Pub/Sub (SUBSCRIBE / PUBLISH)."""

    @pytest.fixture
    async def broker(self, redis_server: RedisProcess, brokers: RedisBrokers) -> BrokerUnderTest:
        broker, recorder = await brokers.start(redis_server.url)
        return BrokerUnderTest(broker, recorder)


class TestRedisBrokerSharded(BrokerContract):
    """The contract over sharded Pub/Sub (SSUBSCRIBE / SPUBLISH), as used with Redis Cluster."""

    @pytest.fixture
    async def broker(self, redis_server: RedisProcess, brokers: RedisBrokers) -> BrokerUnderTest:
        broker, recorder = await brokers.start(redis_server.url + "?sharded_pubsub=true")
        return BrokerUnderTest(broker, recorder)


async def until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """Poll an async or plain condition every 20 ms until it is true."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)


async def raw_client(server: RedisProcess) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=server.port)


# --- Redis goes away -----------------------------------------------------------------------


async def test_redis_restart_unhealthy_refuses_publishes_then_resubscribes(
    own_redis: StartRedis, brokers: RedisBrokers
) -> None:
    server = own_redis()
    broker, recorder = await brokers.start(server.url)
    channel = unique()
    await broker.subscribe(channel)
    before = await broker.publish(channel, pub(b'"before"'), HISTORY)
    await recorder.count(channel, 1)
    assert before.offset == 1

    server.stop()
    await until(lambda: _not(broker.healthy()))
    with pytest.raises(BrokerUnavailable) as refused:
        await broker.publish(channel, pub(b'"lost?"'), HISTORY)
    assert refused.value.__cause__ is not None  # translated, with the redis error kept
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe(unique())
    with pytest.raises(BrokerUnavailable):
        await broker.history(channel)

    own_redis(port=server.port)  # an empty Redis: it kept nothing (no persistence)
    await until(broker.healthy)
    after = await broker.publish(channel, pub(b'"after"'), HISTORY)
    await recorder.count(channel, 2)
    assert [p.data for p, _ in recorder.on(channel)] == [b'"before"', b'"after"']
    # Redis lost the stream: a new epoch, so nobody recovers across the loss by mistake.
    assert after.offset == 1
    assert after.epoch != before.epoch
    assert recorder.on(channel)[1][1] == after.epoch
    assert recorder.gaps == [channel]  # and the node was told it could not be bridged
    assert broker.reconnects >= 1


async def _not(healthy: Any) -> bool:
    return not await healthy


async def test_publications_missed_while_pubsub_was_down_are_delivered_from_the_stream(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    # A slow first reconnect leaves time to publish while this node is not subscribed.
    subscriber, recorder = await brokers.start(
        redis_server.url, reconnect_min_delay=0.6, reconnect_max_delay=0.6
    )
    publisher, _ = await brokers.start(redis_server.url)
    channel, plain = unique(), unique()
    await subscriber.subscribe(channel)
    await subscriber.subscribe(plain)
    first = await publisher.publish(channel, pub(b"1"), HISTORY)
    await subscriber.history(channel, limit=0)
    await recorder.count(channel, 1)

    async with await raw_client(redis_server) as admin:
        killed = await admin.client_kill_filter(_type="pubsub", skipme=True)
    assert killed >= 1
    await until(lambda: _not(subscriber.healthy()), timeout=0.5)
    for i in (2, 3, 4):
        await publisher.publish(channel, pub(b"%d" % i), HISTORY)
    await publisher.publish(plain, pub(b'"no history"'), PublishOptions())
    assert not await subscriber.healthy()  # all of the above happened while it was away

    await recorder.count(channel, 4)
    await until(subscriber.healthy)
    await publisher.publish(channel, pub(b"5"), HISTORY)
    await recorder.count(channel, 5)
    delivered = recorder.on(channel)
    assert [p.offset for p, _ in delivered] == [1, 2, 3, 4, 5]  # once each, in order
    assert [int(p.data) for p, _ in delivered] == [1, 2, 3, 4, 5]
    assert {e for _, e in delivered} == {first.epoch}
    assert recorder.gaps == []
    assert recorder.on(plain) == []  # nothing to recover without history: lost, as documented
    assert subscriber.reconnects == 1


async def test_a_frozen_redis_is_detected_by_the_keepalive(
    own_redis: StartRedis, brokers: RedisBrokers
) -> None:
    server = own_redis()
    broker, recorder = await brokers.start(server.url, ping_interval=0.2)
    channel = unique()
    await broker.subscribe(channel)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)  # alive, connected, silent
    try:
        await until(lambda: _not(broker.healthy()), timeout=3.0)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    await until(broker.healthy, timeout=5.0)
    await until(lambda: broker.reconnects >= 1)
    await broker.publish(channel, pub(), HISTORY)
    await recorder.count(channel, 1)


async def test_starting_before_redis_is_up(own_redis: StartRedis, brokers: RedisBrokers) -> None:
    port = free_port()
    broker, recorder = await brokers.start(f"redis://127.0.0.1:{port}/0", start_timeout=0.2)
    assert not await broker.healthy()
    with pytest.raises(BrokerUnavailable):
        await broker.publish(unique(), pub(), HISTORY)
    own_redis(port=port)
    await until(broker.healthy)
    channel = unique()
    await broker.subscribe(channel)
    await broker.publish(channel, pub(), HISTORY)
    await recorder.count(channel, 1)


async def test_the_pubsub_connection_is_read_in_the_transports_callback(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    """The fast path (broker/redis_tap.py) is the one taken when hiredis is there."""
    broker, recorder = await brokers.start(redis_server.url)
    channel = unique()
    await broker.subscribe(channel)
    transport = pubsub_transport(broker)
    assert isinstance(transport.get_protocol(), redis_tap._Tap)
    await broker.publish(channel, pub(), HISTORY)
    await recorder.count(channel, 1)


async def test_redis_pys_health_checks_stay_off_the_brokers_own_connections(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    """``health_check_interval`` in the URL goes to redis-py's pool; on the Pub/Sub and
    publish connections its check would read a reply that belongs to the broker's reader."""
    broker, recorder = await brokers.start(redis_server.url + "?health_check_interval=1")
    first, second = unique(), unique()
    await broker.subscribe(first)
    await broker.publish(first, pub(), HISTORY)
    await asyncio.sleep(1.2)  # past the interval: redis-py would check before the next write
    await broker.subscribe(second)
    await broker.publish(second, pub(), HISTORY)
    await broker.publish(first, pub(), HISTORY)
    await recorder.count(first, 2)
    await recorder.count(second, 1)
    assert broker.reconnects == 0


async def test_the_portable_read_path_delivers_the_same(
    redis_server: RedisProcess, brokers: RedisBrokers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the hiredis fast path (no hiredis, or redis-py internals moved)."""
    monkeypatch.setattr(redis_tap, "hiredis_source", lambda conn: None)
    broker, recorder = await brokers.start(redis_server.url)
    channel = unique()
    await broker.subscribe(channel)
    await asyncio.gather(*(broker.publish(channel, pub(b"%d" % i), HISTORY) for i in range(50)))
    await broker.publish_join(channel, ClientInfo("u", "c"))
    await recorder.count(channel, 50)
    await recorder.until(lambda: len(recorder.joins) == 1)
    assert [p.offset for p, _ in recorder.on(channel)] == list(range(1, 51))


# --- presence expiry -----------------------------------------------------------------------


async def test_presence_of_a_crashed_node_expires(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    crashed, _ = await brokers.start(redis_server.url)
    alive, _ = await brokers.start(redis_server.url)
    channel = unique()
    ghost, live = ClientInfo("ghost", "c-ghost"), ClientInfo("live", "c-live")
    await crashed.add_presence(channel, ghost, 0.4)
    await alive.add_presence(channel, live, 0.4)
    assert set(await alive.presence(channel)) == {"c-ghost", "c-live"}
    await crashed.close()  # no remove_presence: as if the process died
    await asyncio.sleep(0.9)  # more than twice the TTL: the live node refreshed meanwhile
    assert await alive.presence(channel) == {"c-live": live}
    assert await alive.presence_stats(channel) == (1, 1)
    await alive.remove_presence(channel, "c-live")
    assert await alive.presence(channel) == {}


async def test_presence_keys_vanish_with_their_last_entry(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, _ = await brokers.start(redis_server.url)
    channel = unique()
    await broker.add_presence(channel, ClientInfo("u", "c"), 0.3)
    await broker.close()
    await asyncio.sleep(0.5)
    async with await raw_client(redis_server) as admin:
        assert await admin.keys(f"{brokers.prefix}:*presence*") == []


# --- errors and bad input ------------------------------------------------------------------


async def test_redis_errors_become_broker_errors(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, _ = await brokers.start(redis_server.url)
    channel = unique()
    async with await raw_client(redis_server) as admin:
        await admin.set(f"{brokers.prefix}:{{{channel}}}:meta", "not a hash")
    with pytest.raises(BrokerError) as failed:
        await broker.publish(channel, pub(), HISTORY)
    assert not isinstance(failed.value, BrokerUnavailable)  # Redis answered: not an outage
    assert "WRONGTYPE" in str(failed.value)
    assert type(failed.value.__cause__).__module__.startswith("redis")


async def test_foreign_messages_on_a_channel_are_dropped(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, recorder = await brokers.start(redis_server.url)
    channel = unique()
    await broker.subscribe(channel)
    async with await raw_client(redis_server) as admin:
        for garbage in (b"", b"hello", b"[1,2]\nx", b"+not json"):
            await admin.publish(f"{brokers.prefix}:{{{channel}}}", garbage)
    await broker.publish(channel, pub(b'"good"'), HISTORY)
    await recorder.count(channel, 1)
    assert [p.data for p, _ in recorder.on(channel)] == [b'"good"']
    assert recorder.joins == []
    assert await broker.healthy()


def test_url_options_are_validated() -> None:
    with pytest.raises(ConfigError) as bad:
        RedisBroker.from_url("redis://127.0.0.1:1/0?max_connections=-1&ping_interval=soon")
    assert len(bad.value.problems) == 2
    with pytest.raises(ConfigError):
        RedisBroker.from_url("redis://127.0.0.1:1/0", no_such_option=1)
    with pytest.raises(ConfigError):
        RedisBroker.from_url("redis://127.0.0.1:1/0?sharded_pubsub=maybe")


async def test_the_registry_builds_a_redis_broker(
    redis_server: RedisProcess, brokers: RedisBrokers
) -> None:
    broker, presence = create_broker(redis_server.url + f"?prefix={brokers.prefix}")
    assert isinstance(broker, RedisBroker)
    assert presence is broker
    recorder = Recorder()
    await broker.start(recorder)
    try:
        channel = unique()
        await broker.subscribe(channel)
        position = await broker.publish(channel, Publication(b"1"), HISTORY)
        await recorder.count(channel, 1)
        assert position == StreamPosition(1, recorder.on(channel)[0][1])
    finally:
        await broker.close()


# --- Redis Cluster -------------------------------------------------------------------------


async def delivered_after(
    publisher: RedisBroker, channel: str, recorder: Recorder, options: PublishOptions
) -> bool:
    """Publish ``"after"`` (an error counts as not yet) and tell whether one was delivered."""
    with contextlib.suppress(BrokerError):
        await publisher.publish(channel, pub(b'"after"'), options)
    await asyncio.sleep(0.05)
    return any(p.data == b'"after"' for p, _ in recorder.on(channel))


class TestRedisClusterBroker(BrokerContract):
    """The contract on a three-primary Redis Cluster, over sharded Pub/Sub.

    Channels land on different primaries, so this node holds one Pub/Sub
    connection per primary it has subscribers for.
    """

    @pytest.fixture
    async def broker(
        self, redis_cluster: RedisClusterProcesses, brokers: RedisBrokers
    ) -> BrokerUnderTest:
        broker, recorder = await brokers.start(redis_cluster.url)
        return BrokerUnderTest(broker, recorder)


async def test_cluster_with_classic_pubsub(
    redis_cluster: RedisClusterProcesses, brokers: RedisBrokers
) -> None:
    broker, recorder = await brokers.start(redis_cluster.url + "?sharded_pubsub=false")
    channels = [unique() for _ in range(6)]
    for channel in channels:
        await broker.subscribe(channel)
    for channel in channels:
        await broker.publish(channel, pub(b'"h"'), HISTORY)
        await broker.publish(channel, pub(b'"n"'), PublishOptions())
    for channel in channels:
        await recorder.count(channel, 2)
        assert [p.offset for p, _ in recorder.on(channel)] == [1, 0]


async def test_cluster_channel_follows_its_slot_to_another_primary(
    redis_cluster: RedisClusterProcesses, brokers: RedisBrokers
) -> None:
    subscriber, recorder = await brokers.start(redis_cluster.url)
    publisher, _ = await brokers.start(redis_cluster.url)
    owner = redis_cluster.nodes[1]
    channel, slot = redis_cluster.empty_slot_channel(owner)  # may move without MIGRATE
    await subscriber.subscribe(channel)
    await publisher.publish(channel, pub(b'"before"'), PublishOptions())
    await recorder.count(channel, 1)

    target = next(n for n in redis_cluster.nodes if n is not owner)
    target_id = redis_cluster.node_id(target)
    for node in (target, owner, *redis_cluster.nodes):
        async with await raw_client(node) as c:
            await c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    assert redis_cluster.owner(slot) is target

    # The old owner dropped the subscription (sunsubscribe); the broker follows the slot.
    await until(lambda: delivered_after(publisher, channel, recorder, PublishOptions()))
    try:
        assert subscriber.reconnects == 0  # moved, not reconnected
    finally:
        for node in redis_cluster.nodes:  # give the slot back for the tests that follow
            async with await raw_client(node) as c:
                await c.execute_command(
                    "CLUSTER", "SETSLOT", slot, "NODE", redis_cluster.node_id(owner)
                )


async def test_cluster_primary_lost_channels_move_to_the_new_owner(
    brokers: RedisBrokers,
) -> None:
    cluster = RedisClusterProcesses(2, "--cluster-require-full-coverage", "no")
    cluster.start()
    try:
        survivor, doomed = cluster.nodes
        channel, slot = cluster.empty_slot_channel(doomed)
        subscriber, recorder = await brokers.start(cluster.url)
        publisher, _ = await brokers.start(cluster.url)
        await subscriber.subscribe(channel)
        before = await publisher.publish(channel, pub(b'"before"'), HISTORY)
        await recorder.count(channel, 1)
        await subscriber.history(channel, limit=0)

        doomed.stop()  # no replica: an operator gives its slot to the survivor
        async with await raw_client(survivor) as c:
            await c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(survivor))
        assert cluster.owner(slot, ask=survivor) is survivor

        await until(lambda: delivered_after(publisher, channel, recorder, HISTORY), timeout=10)
        assert recorder.gaps == [channel]  # the history died with its primary: the node is told
        after = [(p, e) for p, e in recorder.on(channel) if p.data == b'"after"']
        assert after[0][1] != before.epoch
    finally:
        cluster.stop()
