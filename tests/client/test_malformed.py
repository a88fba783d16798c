"""A misbehaving server: the client refuses its frames with a clear error and reconnects.

The server here is a real ``websockets`` server that sends what each test
scripts. The first connection misbehaves, the second behaves: the client must
report the problem (1002, with what was wrong), reconnect, and carry on.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import ServerConnection

from kizuna.client import (
    Client,
    ConnectionState,
    Disconnected,
    MalformedFrame,
    Publication,
    Subscribed,
)
from tests.client.fake_server import (
    FakeServer,
    answer_connect,
    behave,
    hole_then_replay,
    receive_command,
)
from tests.client.support import FAST_BACKOFF, StateLog, next_event

CONNECTED = ConnectionState.CONNECTED
DISCONNECTED = ConnectionState.DISCONNECTED


def garbage_then_behave(*frames: str | bytes, after_connect: bool = False) -> object:
    async def script(conn: ServerConnection, n: int) -> None:
        if n > 1:
            await behave(conn)
            return
        if after_connect:
            await answer_connect(conn)
        else:
            await receive_command(conn)
        for frame in frames:
            await conn.send(frame)
        await conn.wait_closed()

    return script


@pytest.mark.parametrize(
    ("frames", "after_connect", "expected"),
    [
        (["<html>502 Bad Gateway</html>"], False, "not JSON: '<html>502 Bad Gateway</html>'"),
        (['{"id": 1}'], False, "reply 1: result must be an object"),
        (['{"id": 1, "result": {"version": "0"}}'], False, "connect result: client must be"),
        ([b"\xff\xfe\x00garbage"], False, "not JSON"),
        (['["a", "list"]'], True, "not a JSON object"),
        (['{"push": "pub", "channel": "chat:x"}'], True, "publication without data"),
        (['{"push": "pub", "channel": "chat:x", "data": 1, "offset": 9}'], True, "epoch"),
        (['{"id": 99, "result": {}}\n{"hello": "there"}'], True, "neither a reply"),
    ],
)
async def test_malformed_frames_close_with_1002_and_reconnect(
    frames: list[str | bytes], after_connect: bool, expected: str
) -> None:
    log = StateLog()
    async with FakeServer(garbage_then_behave(*frames, after_connect=after_connect)) as server:
        async with Client(server.url, token="t", backoff=FAST_BACKOFF, on_state=log) as client:
            # connect() returns once connected: after the garbage, on the second connection.
            dropped = log.of(DISCONNECTED)[0] if not after_connect else None
            if dropped is None:
                dropped = await log.wait_for(lambda c: c.state is DISCONNECTED)
                await log.wait_state(CONNECTED, after=len(log.changes) - 1)
            assert dropped.code == 1002
            assert dropped.reconnect
            assert dropped.reason.startswith("malformed frame from the server: ")
            assert expected in dropped.reason
            assert isinstance(dropped.error, MalformedFrame)
            assert await client.ping() >= 0  # the second connection works
        assert server.connections == 2


async def test_a_reply_to_an_unknown_command_is_ignored() -> None:
    async def script(conn: ServerConnection, n: int) -> None:
        await answer_connect(conn)
        command = await receive_command(conn)
        await conn.send('{"id": 12345, "result": {}}')  # nobody asked
        await conn.send(f'{{"id": {command["id"]}, "result": {{}}}}')
        await conn.wait_closed()

    log = StateLog()
    async with FakeServer(script) as server, Client(server.url, on_state=log) as client:
        await client.ping()
        assert DISCONNECTED not in log.states()


@pytest.mark.parametrize(
    ("push", "terminal"),
    [
        ('{"push": "disconnect", "code": 4003, "reason": "go away", "reconnect": false}', True),
        ('{"push": "disconnect", "code": 3001, "reason": "shutdown", "reconnect": false}', True),
        ('{"push": "disconnect", "code": 3001, "reason": "shutdown", "reconnect": true}', False),
    ],
)
async def test_disconnect_push_decides_about_reconnecting(push: str, terminal: bool) -> None:
    async def script(conn: ServerConnection, n: int) -> None:
        await answer_connect(conn)
        if n == 1:
            await conn.send(push)
        await conn.wait_closed()

    log = StateLog()
    async with FakeServer(script) as server:
        client = Client(server.url, backoff=FAST_BACKOFF, on_state=log)
        await client.connect()
        dropped = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert dropped.reconnect is not terminal
        if terminal:
            with pytest.raises(Disconnected):
                await client.ping()
            await asyncio.sleep(FAST_BACKOFF.max_delay * 2)
            assert server.connections == 1
        else:
            await log.wait_state(CONNECTED, after=len(log.changes) - 1)
            assert server.connections == 2
        await client.close()


@pytest.mark.parametrize(("code", "terminal"), [(4001, True), (4999, True), (3999, False)])
async def test_close_codes_decide_about_reconnecting(code: int, terminal: bool) -> None:
    async def script(conn: ServerConnection, n: int) -> None:
        await answer_connect(conn)
        if n == 1:
            await conn.close(code, "scripted")
        await conn.wait_closed()

    log = StateLog()
    async with FakeServer(script) as server:
        client = Client(server.url, backoff=FAST_BACKOFF, on_state=log)
        await client.connect()
        dropped = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert (dropped.code, dropped.reason, dropped.reconnect) == (code, "scripted", not terminal)
        if not terminal:
            await log.wait_state(CONNECTED, after=len(log.changes) - 1)
        await client.close()
    assert server.connections == (1 if terminal else 2)


async def test_a_server_that_never_answers_connect_is_left_after_timeout() -> None:
    async def script(conn: ServerConnection, n: int) -> None:
        if n == 1:
            await conn.wait_closed()  # reads nothing, answers nothing
        else:
            await behave(conn)

    log = StateLog()
    async with FakeServer(script) as server:
        async with Client(server.url, timeout=0.3, backoff=FAST_BACKOFF, on_state=log):
            dropped = log.of(DISCONNECTED)[0]
            assert (dropped.code, dropped.reconnect) == (1006, True)
            assert "no answer to connect within 0.3 s" in dropped.reason
        assert server.connections == 2


async def test_a_malformed_answer_raises_in_the_caller_and_the_client_reconnects() -> None:
    async def script(conn: ServerConnection, n: int) -> None:
        if n > 1:
            await behave(conn)
            return
        await answer_connect(conn)
        command = await receive_command(conn)
        bad = {"publications": "none", "offset": 1, "epoch": "e"}
        await conn.send(json.dumps({"id": command["id"], "result": bad}))
        await conn.wait_closed()

    log = StateLog()
    async with (
        FakeServer(script) as server,
        Client(server.url, backoff=FAST_BACKOFF, on_state=log) as client,
    ):
        with pytest.raises(MalformedFrame, match="history result for 'chat:x': publications"):
            await client.history("chat:x")
        await log.wait_state(CONNECTED, after=2)
        assert server.connections == 2


async def test_a_replayed_duplicate_is_dropped_and_order_is_kept() -> None:
    """A server that repeats publications the client already has: the app sees each once."""

    async def script(conn: ServerConnection, n: int) -> None:
        await answer_connect(conn)
        command = await receive_command(conn)
        top = {"recoverable": True, "offset": 1, "epoch": "e"}
        frames = [
            {"id": command["id"], "result": top},
            {"push": "pub", "channel": "chat:dup", "data": "one", "offset": 1, "epoch": "e"},
            {"push": "pub", "channel": "chat:dup", "data": "two", "offset": 2, "epoch": "e"},
            {"push": "pub", "channel": "chat:dup", "data": "two again", "offset": 2, "epoch": "e"},
            {"push": "pub", "channel": "chat:dup", "data": "new life", "offset": 1, "epoch": "f"},
        ]
        await conn.send("\n".join(json.dumps(f) for f in frames))
        await conn.wait_closed()

    async with FakeServer(script) as server, Client(server.url) as client:
        sub = await client.subscribe("chat:dup")
        seen = [await next_event(sub, Publication) for _ in range(2)]
    assert [(p.data, p.offset, p.epoch) for p in seen] == [("two", 2, "e"), ("new life", 1, "f")]


async def test_a_hole_in_the_live_stream_is_recovered_by_subscribing_again() -> None:
    """Offsets jump from 2 to 5: the client asks again from 2 and gets 3, 4, 5 replayed."""
    sent: list[dict[str, object]] = []
    script = hole_then_replay(sent)

    async with FakeServer(script) as server, Client(server.url) as client:
        sub = await client.subscribe("chat:hole")
        events = [await next_event(sub) for _ in range(8)]
    assert [e.data if isinstance(e, Publication) else type(e).__name__ for e in events] == [
        "Subscribed",
        2,
        "Subscribed",
        3,
        4,
        5,
        6,
        7,
    ]
    again = events[2]
    assert isinstance(again, Subscribed) and again.recovered and again.missed == 4
    assert [c["method"] for c in sent] == ["subscribe", "unsubscribe", "subscribe"]
    assert sent[2]["params"] == {"channel": "chat:hole", "since": {"offset": 2, "epoch": "e"}}


async def test_a_draining_servers_delay_advice_replaces_the_backoff() -> None:
    """A node that drains advises when to come back; the client waits exactly that."""
    advice = (
        '{"push": "disconnect", "code": 3001, "reason": "shutdown", "reconnect": true,'
        ' "delay_ms": 1234}'
    )

    async def script(conn: ServerConnection, n: int) -> None:
        if n > 1:
            await behave(conn)
            return
        await answer_connect(conn)
        await conn.send(advice)
        await conn.wait_closed()

    log = StateLog()
    async with (
        FakeServer(script) as server,
        Client(server.url, backoff=FAST_BACKOFF, on_state=log) as client,
    ):
        dropped = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert (dropped.code, dropped.reconnect, dropped.delay) == (3001, True, 1.234)
        started = asyncio.get_running_loop().time()
        await log.wait_state(CONNECTED, after=len(log.changes) - 1)
        assert asyncio.get_running_loop().time() - started >= 1.1
        assert await client.ping() >= 0


async def test_a_bad_delay_advice_is_a_malformed_frame() -> None:
    bad = '{"push": "disconnect", "code": 3001, "reason": "x", "reconnect": true, "delay_ms": -5}'

    async def script(conn: ServerConnection, n: int) -> None:
        await answer_connect(conn)
        if n == 1:
            await conn.send(bad)
        await conn.wait_closed()

    log = StateLog()
    async with FakeServer(script) as server, Client(server.url, backoff=FAST_BACKOFF, on_state=log):
        dropped = await log.wait_for(lambda c: c.state is DISCONNECTED)
        assert dropped.code == 1002
        assert "delay_ms" in dropped.reason
