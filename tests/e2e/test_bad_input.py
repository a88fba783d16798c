"""Bad input end to end: each mistake gets its documented code, and nobody else pays for it.

Every test follows one shape: a well-behaved *watcher* subscribes to a
channel; the server HTTP API publishes five messages; a second client on the
same channel misbehaves and the test checks the exact code it gets; five more
messages are published; the watcher must then hold all ten, each exactly
once, in order (checked up to a ping barrier, so a late duplicate would show).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from kizuna.protocol.codes import DisconnectCode, ErrorCode
from tests.e2e.clients import Api, PeerClosed, PyClient, WireClient, token
from tests.e2e.conftest import MAX_MESSAGE_SIZE, OpenPy
from tests.support.processes import KizunaProcess


@dataclass
class Scene:
    server: KizunaProcess
    api: Api
    channel: str
    watcher: WireClient
    open_py: OpenPy
    uid: str

    async def offender(self, *, subscribed: bool = True) -> PyClient:
        """A second client on the channel: connected and subscribed unless told otherwise."""
        client = await self.open_py(self.server.ws_url)
        if subscribed:
            await client.connect(token(f"offender-{self.uid}"))
            await client.call("subscribe", channel=self.channel)
        return client

    async def around(self, misbehave: Callable[[], Awaitable[None]]) -> None:
        """Publish 0..4, misbehave, publish 5..9; the watcher must get 0..9 exactly once."""
        for n in range(5):
            await self.api.publish(self.channel, n)
        await misbehave()
        for n in range(5, 10):
            await self.api.publish(self.channel, n)
        pubs = await self.watcher.publications(self.channel)
        assert [p["data"] for p in pubs] == list(range(10))
        assert [p["offset"] for p in pubs] == list(range(1, 11))


@pytest.fixture
async def scene(server: KizunaProcess, api: Api, open_py: OpenPy, uid: str) -> Scene:
    channel = f"chat:bad-{uid}"
    watcher = await open_py(server.ws_url)
    await watcher.connect(token(f"watcher-{uid}"))
    await watcher.call("subscribe", channel=channel)
    return Scene(server, api, channel, watcher, open_py, uid)


MALFORMED = {
    "not-json": "{not json",
    "json-array": "[1, 2, 3]",
    "no-id": '{"method": "ping"}',
    "id-zero": '{"id": 0, "method": "ping"}',
    "id-string": '{"id": "1", "method": "ping"}',
    "blank": "\n\n",
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_frame_closes_4001(scene: Scene, frame: str):
    async def misbehave() -> None:
        offender = await scene.offender()
        await offender.send_raw(frame)
        assert (await offender.expect_close()).code == DisconnectCode.BAD_REQUEST

    await scene.around(misbehave)


async def test_unknown_method_is_error_104_and_the_connection_stays(scene: Scene):
    offender: list[PyClient] = []

    async def misbehave() -> None:
        client = await scene.offender()
        offender.append(client)
        assert await client.error_code("frobnicate", channel=scene.channel) == (
            ErrorCode.METHOD_NOT_FOUND
        )
        assert await client.call("ping") == {}

    await scene.around(misbehave)
    # The offender is still subscribed and got every later publication exactly once as well.
    pubs = await offender[0].publications(scene.channel)
    assert [p["data"] for p in pubs] == list(range(5, 10))


MISSING = {
    "publish-without-data": ("publish", {"channel": "chat:CHANNEL"}),
    "publish-without-channel": ("publish", {"data": 1}),
    "subscribe-without-channel": ("subscribe", {}),
    "history-without-channel": ("history", {}),
    "presence-without-channel": ("presence", {}),
    "refresh-without-token": ("refresh", {}),
    "subscribe-empty-channel": ("subscribe", {"channel": ""}),
    "history-negative-limit": ("history", {"channel": "chat:CHANNEL", "limit": -1}),
    "subscribe-since-without-epoch": ("subscribe", {"channel": "chat:x", "since": {"offset": 1}}),
}


@pytest.mark.parametrize(("method", "params"), list(MISSING.values()), ids=list(MISSING))
async def test_missing_or_invalid_fields_are_error_107(
    scene: Scene, method: str, params: dict[str, object]
):
    async def misbehave() -> None:
        client = await scene.offender()
        fixed = {
            k: (v.replace("chat:CHANNEL", scene.channel) if isinstance(v, str) else v)
            for k, v in params.items()
        }
        assert await client.error_code(method, **fixed) == ErrorCode.BAD_REQUEST
        assert await client.call("ping") == {}  # the connection stays

    await scene.around(misbehave)


async def test_params_that_are_not_an_object_are_error_107(scene: Scene):
    async def misbehave() -> None:
        client = await scene.offender()
        await client.send_raw('{"id": 50, "method": "publish", "params": [1]}')
        reply = await client.reply_to(50)
        assert reply["error"]["code"] == ErrorCode.BAD_REQUEST

    await scene.around(misbehave)


async def test_message_over_the_size_limit_closes_4004(scene: Scene):
    async def misbehave() -> None:
        client = await scene.offender()
        frame = f'{{"id": 9, "method": "publish", "params": {{"channel": "{scene.channel}", '
        frame += f'"data": "{"x" * MAX_MESSAGE_SIZE}"}}}}'
        assert MAX_MESSAGE_SIZE < len(frame.encode()) < 2 * MAX_MESSAGE_SIZE
        await client.send_raw(frame)
        assert (await client.expect_close()).code == DisconnectCode.MESSAGE_TOO_LARGE

    await scene.around(misbehave)


async def test_message_at_the_size_limit_is_accepted(scene: Scene):
    """The limit itself is allowed: only frames *over* ``max_message_size`` bytes are refused."""
    client = await scene.offender()
    head = f'{{"id": 9, "method": "publish", "params": {{"channel": "{scene.channel}", "data": "'
    tail = '"}}'
    payload = "x" * (MAX_MESSAGE_SIZE - len(head) - len(tail))
    frame = head + payload + tail
    assert len(frame.encode()) == MAX_MESSAGE_SIZE
    await client.send_raw(frame)
    reply = await client.reply_to(9)
    assert reply["result"]["offset"] == 1
    assert [p["data"] for p in await scene.watcher.publications(scene.channel)] == [payload]


async def test_size_limit_counts_bytes_not_characters(scene: Scene):
    """``max_message_size`` is in bytes: 600 two-byte characters are over a 1024-byte limit."""

    async def misbehave() -> None:
        client = await scene.offender()
        frame = f'{{"id": 9, "method": "publish", "params": {{"channel": "{scene.channel}", '
        frame += f'"data": "{"é" * 600}"}}}}'
        assert len(frame) < MAX_MESSAGE_SIZE < len(frame.encode()) < 2 * MAX_MESSAGE_SIZE
        await client.send_raw(frame)
        with pytest.raises(PeerClosed) as closed:
            await client.barrier()  # its reply arrives only if the frame was accepted
        assert closed.value.code == DisconnectCode.MESSAGE_TOO_LARGE

    await scene.around(misbehave)


async def test_frame_far_over_the_limit_is_refused_by_the_framing_layer(scene: Scene):
    """Frames beyond twice the limit are never buffered: the WebSocket layer closes with 1009."""

    async def misbehave() -> None:
        client = await scene.offender()
        await client.send_raw('{"id": 9, "method": "ping", "pad": "' + "x" * 4 * MAX_MESSAGE_SIZE)
        assert (await client.expect_close()).code == 1009

    await scene.around(misbehave)


BEFORE_CONNECT = {
    "subscribe": {"method": "subscribe", "params": {"channel": "chat:CHANNEL"}},
    "ping": {"method": "ping"},
    "unknown-method": {"method": "frobnicate"},
    "bad-params": {"method": "subscribe", "params": {}},
}


@pytest.mark.parametrize("command", list(BEFORE_CONNECT.values()), ids=list(BEFORE_CONNECT))
async def test_command_before_connect_closes_4001(scene: Scene, command: dict[str, object]):
    """The first command must be connect: anything else, even an invalid one, closes 4001."""

    async def misbehave() -> None:
        client = await scene.offender(subscribed=False)
        frame = json.dumps({"id": 1, **command}).replace("chat:CHANNEL", scene.channel)
        await client.send_raw(frame)
        with pytest.raises(PeerClosed) as closed:
            await client.reply_to(1)  # a reply instead of the close
        assert closed.value.code == DisconnectCode.BAD_REQUEST

    await scene.around(misbehave)


async def test_second_connect_is_error_107(scene: Scene):
    async def misbehave() -> None:
        client = await scene.offender()
        assert await client.error_code("connect", token=token(f"again-{scene.uid}")) == (
            ErrorCode.BAD_REQUEST
        )

    await scene.around(misbehave)
