"""The Python client against a real ``kizuna serve``: every command, both ways of consuming."""

from __future__ import annotations

import asyncio

import pytest

from kizuna.client import (
    Client,
    ClientError,
    ConnectionState,
    Disconnected,
    Join,
    Leave,
    Publication,
    ServerRejected,
    StreamPosition,
    Subscribed,
    SubscriptionEvent,
)
from tests.client.support import TIMEOUT, StateLog, next_event, publications, token
from tests.support.processes import KizunaProcess


async def test_subscribe_publish_history_presence(shared_kizuna: KizunaProcess) -> None:
    log = StateLog()
    async with Client(shared_kizuna.ws_url, token=token("alice"), on_state=log) as alice:
        assert alice.state is ConnectionState.CONNECTED
        sub = await alice.subscribe("chat:lobby")
        subscribed = await next_event(sub, Subscribed)
        assert subscribed.recoverable and not subscribed.gap and not subscribed.resubscribed
        assert subscribed.position is not None and subscribed.position.offset == 0

        position = await alice.publish("chat:lobby", {"text": "hello"})
        assert position == StreamPosition(1, subscribed.position.epoch)
        pub = await next_event(sub, Publication)
        assert (pub.data, pub.offset, pub.info and pub.info.user) == ({"text": "hello"}, 1, "alice")
        assert sub.position == position

        page = await alice.history("chat:lobby")
        assert [p.data for p in page.publications] == [{"text": "hello"}]
        assert page.position == position

        present = await alice.presence("chat:lobby")
        assert [info.user for info in present.values()] == ["alice"]
        assert alice.client_id in present
        stats = await alice.presence_stats("chat:lobby")
        assert (stats.num_clients, stats.num_users) == (1, 1)
        assert 0 < await alice.ping() < TIMEOUT
    assert log.states() == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.DISCONNECTED,
    ]
    closed = log.of(ConnectionState.DISCONNECTED)[0]
    assert (closed.code, closed.reconnect) == (1000, False)


async def test_two_clients_see_each_other(shared_kizuna: KizunaProcess) -> None:
    seen: list[SubscriptionEvent] = []
    bob_left = asyncio.Event()

    def handler(event: SubscriptionEvent) -> None:  # handler mode
        seen.append(event)
        if isinstance(event, Leave) and event.info.user == "bob":
            bob_left.set()

    async with (
        Client(shared_kizuna.ws_url, token=token("alice")) as alice,
        Client(shared_kizuna.ws_url, token=token("bob")) as bob,
    ):
        await alice.subscribe("chat:room", handler)
        bob_sub = await bob.subscribe("chat:room")
        await bob.publish("chat:room", "from bob")
        await alice.publish("chat:room", "from alice")
        pubs, _ = await publications(bob_sub, 2)
        assert [p.data for p in pubs] == ["from bob", "from alice"]
        await bob_sub.unsubscribe()
        await asyncio.wait_for(bob_left.wait(), TIMEOUT)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Subscribed"
    assert [e.data for e in seen if isinstance(e, Publication)] == ["from bob", "from alice"]
    assert any(isinstance(e, Join) and e.info.user == "bob" for e in seen)


async def test_an_async_handler_is_awaited_in_order(shared_kizuna: KizunaProcess) -> None:
    got: list[int] = []

    async def slow(event: SubscriptionEvent) -> None:
        if isinstance(event, Publication):
            await asyncio.sleep(0.001 * (5 - event.data))
            got.append(event.data)

    async with Client(shared_kizuna.ws_url, token=token()) as client:
        sub = await client.subscribe("chat:order", slow)
        for i in range(5):
            await client.publish("chat:order", i)
        await sub.unsubscribe()
        await asyncio.wait_for(sub.drained(), TIMEOUT)
    assert got == [0, 1, 2, 3, 4]


async def test_a_failing_handler_does_not_end_the_subscription(
    shared_kizuna: KizunaProcess, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[object] = []

    def handler(event: SubscriptionEvent) -> None:
        if isinstance(event, Publication):
            if event.data == "bad":
                raise RuntimeError("application bug")
            got.append(event.data)

    async with Client(shared_kizuna.ws_url, token=token()) as client:
        sub = await client.subscribe("chat:h", handler)
        for data in ("a", "bad", "b"):
            await client.publish("chat:h", data)
        await client.unsubscribe("chat:h")
        await asyncio.wait_for(sub.drained(), TIMEOUT)
    assert got == ["a", "b"]
    assert "subscription handler for 'chat:h' failed" in caplog.text


async def test_refusals_are_numbered_errors(shared_kizuna: KizunaProcess) -> None:
    async with Client(shared_kizuna.ws_url, token=token("carol", channels=["chat:mine"])) as client:
        with pytest.raises(ServerRejected) as unknown:
            await client.subscribe("nowhere:x")
        assert unknown.value.code == 102
        with pytest.raises(ServerRejected) as denied:
            await client.subscribe("chat:other")
        assert denied.value.code == 103
        assert client.subscription("chat:other") is None  # nothing stays registered
        with pytest.raises(ServerRejected) as publish_denied:
            await client.publish("notifications:carol", "x")
        assert publish_denied.value.code == 103
        await client.subscribe("chat:mine")
        with pytest.raises(ClientError, match="already subscribed"):
            await client.subscribe("chat:mine")
        with pytest.raises(TypeError):
            await client.publish("chat:mine", object())


async def test_recover_from_a_saved_position(shared_kizuna: KizunaProcess) -> None:
    async with Client(shared_kizuna.ws_url, token=token()) as client:
        first = await client.publish("chat:saved", 1)
        await client.publish("chat:saved", 2)
        await client.publish("chat:saved", 3)
        assert first is not None
        sub = await client.subscribe("chat:saved", since=first)
        subscribed = await next_event(sub, Subscribed)
        assert subscribed.recovered and not subscribed.gap and subscribed.missed == 2
        pubs, _ = await publications(sub, 2)
        assert [p.data for p in pubs] == [2, 3]


async def test_iterators_end_when_the_client_closes(shared_kizuna: KizunaProcess) -> None:
    client = Client(shared_kizuna.ws_url, token=token())
    await client.connect()
    sub = await client.subscribe("chat:end")
    events = []

    async def consume() -> None:
        async for event in sub:
            events.append(event)

    reader = asyncio.create_task(consume())
    await client.publish("chat:end", "last")
    await client.close()
    await asyncio.wait_for(reader, TIMEOUT)  # ends without an error
    assert [e.data for e in events if isinstance(e, Publication)] == ["last"]
    with pytest.raises(Disconnected) as stopped:
        await client.publish("chat:end", "after close")
    assert stopped.value.code == 1000
    await client.close()  # idempotent


async def test_commands_need_connect_first(shared_kizuna: KizunaProcess) -> None:
    client = Client(shared_kizuna.ws_url, token=token())
    with pytest.raises(ClientError, match="connect"):
        await client.publish("chat:x", 1)
    with pytest.raises(ClientError, match="connect"):
        await client.subscribe("chat:x")
    await client.close()


async def test_a_handler_subscription_cannot_be_iterated(shared_kizuna: KizunaProcess) -> None:
    async with Client(shared_kizuna.ws_url, token=token()) as client:
        sub = await client.subscribe("chat:x", lambda e: None)
        with pytest.raises(ClientError, match="handler"):
            aiter(sub)
