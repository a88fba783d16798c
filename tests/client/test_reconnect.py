"""Reconnecting: dropped and stalled connections, restarts, backoff, terminal codes.

The network failures are real: a TCP proxy between client and server resets or
stalls connections, and the server is a real ``kizuna serve`` that the tests
restart. The memory broker loses history on restart, so a restart must show
up as a gap (``recovered: false``); a dropped connection without a restart
must recover exactly, every missed publication once and in order.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from kizuna.client import (
    Backoff,
    Client,
    ConnectionLost,
    ConnectionState,
    Disconnected,
    Publication,
    Subscribed,
    Subscription,
)
from tests.client.conftest import ws_url
from tests.client.support import (
    FAST_BACKOFF,
    TIMEOUT,
    StateLog,
    next_event,
    publications,
    token,
)
from tests.client.tcp_proxy import TcpProxy
from tests.support.processes import KizunaProcess, free_port

CONNECTED = ConnectionState.CONNECTED
DISCONNECTED = ConnectionState.DISCONNECTED
CONNECTING = ConnectionState.CONNECTING


async def _collect_until(sub: Subscription, last: int, into: list[object]) -> None:
    """Append every event to ``into`` until the publication with data ``last`` arrives."""
    async for event in sub:
        into.append(event)
        if isinstance(event, Publication) and event.data == last:
            return


async def test_dropped_connections_recover_every_publication_exactly_once(
    roomy_kizuna: KizunaProcess, roomy_proxy: TcpProxy
) -> None:
    """A publisher writes 1, 2, 3... steadily while the subscriber's connection is cut twice.

    The channel keeps more history than can be missed here; what happens when it
    does not is the next test.
    """
    kizuna, proxy = roomy_kizuna, roomy_proxy
    log = StateLog()
    subscriber = Client(ws_url(proxy.port), token=token("sub"), backoff=FAST_BACKOFF, on_state=log)
    async with subscriber, Client(kizuna.ws_url, token=token("pub")) as publisher:
        sub = await subscriber.subscribe("chat:stream")
        events: list[object] = []
        cuts_done = asyncio.Event()

        async def publish_until_cuts_are_done() -> int:
            """Publish 1, 2, 3... until both cuts are over, then 20 more; returns the last."""
            n = after = 0
            while after < 20:
                n += 1
                await publisher.publish("chat:stream", n)
                if cuts_done.is_set():
                    after += 1
                if n % 10 == 0:
                    await asyncio.sleep(0.005)
            return n

        producer = asyncio.create_task(publish_until_cuts_are_done())
        for _ in range(2):
            await asyncio.sleep(0.1)
            proxy.refusing = True
            proxy.cut()
            before = len(log.changes)
            await log.wait_for(lambda c: c.state is DISCONNECTED, after=before)
            await asyncio.sleep(0.15)  # away while publications keep coming
            proxy.refusing = False
            await log.wait_state(CONNECTED, after=before)
        cuts_done.set()
        total = await asyncio.wait_for(producer, TIMEOUT)
        await asyncio.wait_for(_collect_until(sub, total, events), TIMEOUT)

    data = [e.data for e in events if isinstance(e, Publication)]
    assert data == list(range(1, total + 1))  # every one, once, in order
    offsets = [e.offset for e in events if isinstance(e, Publication)]
    assert offsets == list(range(1, total + 1))
    resubscribed = [e for e in events if isinstance(e, Subscribed) and e.resubscribed]
    assert len(resubscribed) == 2
    assert all(e.recovered and not e.gap for e in resubscribed)
    assert sum(e.missed for e in resubscribed) > 0  # something really was missed and replayed
    drops = [c for c in log.of(DISCONNECTED) if c.reconnect]
    assert len(drops) >= 2
    assert all(c.code == 1006 for c in drops)


async def test_missing_more_than_the_history_holds_is_a_gap_never_a_hole(
    shared_kizuna: KizunaProcess, shared_proxy: TcpProxy
) -> None:
    async with (
        Client(ws_url(shared_proxy.port), token=token(), backoff=FAST_BACKOFF) as client,
        Client(shared_kizuna.ws_url, token=token("other")) as other,
    ):
        sub = await client.subscribe("chat:long-away")
        await next_event(sub, Subscribed)
        shared_proxy.refusing = True
        shared_proxy.cut()
        for i in range(150):  # the chat namespace keeps 100
            await other.publish("chat:long-away", i)
        shared_proxy.refusing = False
        back = await next_event(sub, Subscribed)
        assert back.gap and not back.recovered and back.missed == 0
        assert back.position is not None and back.position.offset == 150
        await client.publish("chat:long-away", "live")
        pub = await next_event(sub, Publication)  # nothing of the lost 150 leaks through
        assert (pub.data, pub.offset) == ("live", 151)


async def test_server_restart_with_memory_broker_surfaces_a_gap(
    kizuna: KizunaProcess, proxy: TcpProxy
) -> None:
    """The client is held off (by the proxy) until something was published after the restart."""
    log = StateLog()
    async with Client(
        ws_url(proxy.port), token=token(), backoff=FAST_BACKOFF, on_state=log
    ) as client:
        sub = await client.subscribe("chat:restart")
        await next_event(sub, Subscribed)
        await client.publish("chat:restart", "before")
        assert (await next_event(sub, Publication)).data == "before"

        proxy.refusing = True
        await asyncio.to_thread(kizuna.stop)
        drop = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert (drop.code, drop.reason, drop.reconnect) == (3001, "shutdown", True)
        await asyncio.to_thread(kizuna.start)
        # Published after the restart, before the client is back: the new history
        # holds it, but the client's position belongs to the lost epoch.
        assert (
            await asyncio.to_thread(kizuna.api, "publish", channel="chat:restart", data="meanwhile")
        ).status_code == 200
        proxy.refusing = False

        resubscribed = await next_event(sub, Subscribed)
        assert resubscribed.resubscribed and resubscribed.gap and not resubscribed.recovered
        assert resubscribed.since is not None and resubscribed.position is not None
        assert resubscribed.since.epoch != resubscribed.position.epoch
        # The gap is the application's cue to reload; history has what it missed.
        page = await client.history("chat:restart")
        assert [p.data for p in page.publications] == ["meanwhile"]

        await client.publish("chat:restart", "after")
        pub = await next_event(sub, Publication)
        assert (pub.data, pub.offset) == ("after", 2)
        await client.publish("chat:restart", "last")
        assert (await next_event(sub, Publication)).data == "last"  # nothing in between


async def test_a_stalled_connection_is_found_by_the_heartbeat(
    shared_kizuna: KizunaProcess, shared_proxy: TcpProxy
) -> None:
    log = StateLog()
    async with Client(
        ws_url(shared_proxy.port),
        token=token(),
        backoff=FAST_BACKOFF,
        ping_interval=0.2,
        ping_timeout=0.3,
        close_timeout=0.3,
        on_state=log,
    ) as client:
        sub = await client.subscribe("chat:stall")
        await next_event(sub, Subscribed)
        shared_proxy.stall()
        for i in range(3):
            await asyncio.to_thread(shared_kizuna.api, "publish", channel="chat:stall", data=i)
        dropped = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert (dropped.code, dropped.reason, dropped.reconnect) == (
            1011,
            "keepalive ping timeout",
            True,
        )
        pubs, others = await publications(sub, 3)
        assert [p.data for p in pubs] == [0, 1, 2]
        again = [e for e in others if isinstance(e, Subscribed)]
        assert again and all(e.recovered and not e.gap for e in again)
        assert sum(e.missed for e in again) == 3  # all three came back through recovery


async def test_a_command_in_flight_when_the_connection_dies_raises_connection_lost(
    shared_kizuna: KizunaProcess, shared_proxy: TcpProxy
) -> None:
    async with Client(
        ws_url(shared_proxy.port),
        token=token(),
        backoff=FAST_BACKOFF,
        ping_interval=0.2,
        ping_timeout=0.3,
        close_timeout=0.3,
    ) as client:
        shared_proxy.stall()
        with pytest.raises(ConnectionLost):
            await client.publish("chat:lost", "maybe")
        # The next command waits for the new connection and goes through.
        assert await client.publish("chat:lost", "surely") is not None


async def test_commands_wait_for_the_connection_to_come_back(
    shared_kizuna: KizunaProcess, shared_proxy: TcpProxy
) -> None:
    log = StateLog()
    async with Client(
        ws_url(shared_proxy.port), token=token(), backoff=FAST_BACKOFF, on_state=log
    ) as client:
        shared_proxy.refusing = True
        shared_proxy.cut()
        await log.wait_for(lambda c: c.state is DISCONNECTED)
        publish = asyncio.create_task(client.publish("chat:wait", "queued"))
        await asyncio.sleep(0.3)
        assert not publish.done()
        shared_proxy.refusing = False
        position = await asyncio.wait_for(publish, TIMEOUT)
        assert position is not None and position.offset == 1


async def test_backoff_delays_stay_within_bounds_and_max_attempts_stops() -> None:
    """Nothing listens on the port: each attempt fails at once; watch the waits between them."""
    policy = Backoff(min_delay=0.05, max_delay=0.2, max_attempts=6)
    log = StateLog()
    client = Client(ws_url(free_port()), token=token(), backoff=policy, on_state=log)
    started = time.monotonic()
    with pytest.raises(Disconnected) as stopped:
        await asyncio.wait_for(client.connect(), TIMEOUT)
    elapsed = time.monotonic() - started
    assert stopped.value.code == 1006
    assert "gave up after 6 attempts" in stopped.value.reason

    connecting = [(t, c) for t, c in log.changes if c.state is CONNECTING]
    retries = [(t, c) for t, c in log.changes if c.state is DISCONNECTED and c.reconnect]
    assert [c.attempt for _, c in connecting] == [0, 1, 2, 3, 4, 5]
    assert len(retries) == 5
    for n, (_, change) in enumerate(retries):
        assert change.delay is not None
        assert 0.05 <= change.delay <= min(0.2, 0.05 * 2**n), (n, change.delay)
    for (left, change), (right, _) in zip(retries, connecting[1:], strict=True):
        assert change.delay is not None
        waited = right - left
        assert change.delay - 0.005 <= waited <= change.delay + 1.0  # slack for a loaded CI
    final = log.changes[-1][1]
    assert (final.state, final.reconnect) == (DISCONNECTED, False)
    assert elapsed < sum(c.delay or 0 for _, c in retries) + 2
    await client.close()


async def test_backoff_resets_after_a_stable_connection(
    shared_kizuna: KizunaProcess, shared_proxy: TcpProxy
) -> None:
    log = StateLog()
    policy = Backoff(min_delay=0.05, max_delay=0.4)
    async with Client(
        ws_url(shared_proxy.port), token=token(), backoff=policy, stable_after=0.3, on_state=log
    ):
        # An unstable stretch: refused three times, then up for a moment only.
        shared_proxy.refusing = True
        shared_proxy.cut()
        mark = len(log.changes)
        await log.wait_for(lambda c: c.state is CONNECTING and c.attempt == 3, after=mark)
        shared_proxy.refusing = False
        await log.wait_state(CONNECTED, after=mark)
        mark = len(log.changes)
        shared_proxy.cut()  # dropped right away: not stable, the count goes on
        again = await log.wait_state(CONNECTING, after=mark)
        assert again.attempt >= 4
        await log.wait_state(CONNECTED, after=mark)

        await asyncio.sleep(0.4)  # now stable
        mark = len(log.changes)
        shared_proxy.cut()
        drop = await log.wait_for(lambda c: c.state is DISCONNECTED, after=mark)
        assert drop.delay == pytest.approx(0.05)  # ceiling(0) == min_delay
        retry = await log.wait_state(CONNECTING, after=mark)
        assert retry.attempt == 1
        await log.wait_state(CONNECTED, after=mark)


async def test_terminal_code_stops_reconnecting(
    shared_kizuna: KizunaProcess, shared_proxy: TcpProxy
) -> None:
    log = StateLog()
    client = Client(
        ws_url(shared_proxy.port), token=token("mallory"), backoff=FAST_BACKOFF, on_state=log
    )
    await client.connect()
    sub = await client.subscribe("chat:x")
    await next_event(sub, Subscribed)
    response = await asyncio.to_thread(shared_kizuna.api, "disconnect", user="mallory")
    assert response.json() == {"result": {"disconnected": 1}}
    with pytest.raises(Disconnected) as ended:  # the iterator raises: this is not a quiet end
        await next_event(sub, Publication)
    assert (ended.value.code, ended.value.reason) == (4003, "forbidden")
    await asyncio.sleep(FAST_BACKOFF.max_delay * 2)  # a retry would have happened by now
    assert shared_proxy.accepted == 1
    assert log.states()[-1] is DISCONNECTED and not log.changes[-1][1].reconnect
    with pytest.raises(Disconnected):
        await client.publish("chat:x", 1)
    with pytest.raises(Disconnected):
        await client.connect()
    await client.close()


async def test_each_retry_tries_the_next_url(shared_kizuna: KizunaProcess) -> None:
    dead = ws_url(free_port())
    log = StateLog()
    async with Client(
        [dead, shared_kizuna.ws_url], token=token(), backoff=FAST_BACKOFF, on_state=log
    ):
        urls = [c.url for c in log.of(CONNECTING)]
        assert urls == [dead, shared_kizuna.ws_url]
        assert log.of(CONNECTED)[0].url == shared_kizuna.ws_url
