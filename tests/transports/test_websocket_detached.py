"""The native WebSocket after the handshake: no ASGI task per connection, nothing reordered.

A kizuna server runs in this test's own event loop (uvicorn with kizuna's protocol
class, as ``kizuna serve`` runs it), so the test can look at the loop's tasks; the
clients are the ``websockets`` library's.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import orjson
import pytest
import websockets
from websockets.frames import Frame, Opcode

from kizuna.core.auth import mint_token
from kizuna.core.client import Client
from kizuna.server import Server
from kizuna.transports.websocket_protocol import (
    INBOX_FRAMES,
    DetachableWebSocketProtocol,
    WritableFlag,
)
from tests.support.inprocess import serving, until_no_clients
from tests.support.processes import JWT_SECRET

CONNECTIONS = 20


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, str]]:
    async with serving() as (server, port):
        yield server, f"ws://127.0.0.1:{port}/connection/websocket"


@pytest.fixture
def url(served: tuple[Server, str]) -> str:
    return served[1]


async def command(ws: websockets.ClientConnection, cid: int, method: str, **params: object) -> dict:  # type: ignore[type-arg]
    """Send one command and return its reply (pushes before it are skipped)."""
    await ws.send(orjson.dumps({"id": cid, "method": method, "params": params}).decode())
    while True:
        for line in str(await asyncio.wait_for(ws.recv(), 5)).splitlines():
            message = orjson.loads(line)
            if message.get("id") == cid:
                assert "error" not in message, message
                return message  # type: ignore[no-any-return]


async def connected(url: str, user: str) -> websockets.ClientConnection:
    # max_queue=None: the chat namespace's leave pushes pile up unread while a test closes
    # its sockets one by one, and a client that stops reading never sees the close reply.
    ws = await websockets.connect(url, compression=None, max_queue=None)
    await command(ws, 1, "connect", token=mint_token(JWT_SECRET, user))
    return ws


def only_protocol(server: Server) -> DetachableWebSocketProtocol:
    """The server side of the one connection the server has."""
    (client,) = server.node.clients.values()
    protocol = client.transport.protocol
    assert isinstance(protocol, DetachableWebSocketProtocol) and protocol.inbox is not None
    return protocol


async def reply_ids(ws: websockets.ClientConnection, count: int) -> list[int]:
    """The ids of the next ``count`` replies, in the order they came."""
    ids: list[int] = []
    while len(ids) < count:
        for line in str(await asyncio.wait_for(ws.recv(), 5)).splitlines():
            ids.append(orjson.loads(line)["id"])
    return ids


def asgi_tasks() -> list[asyncio.Task[object]]:
    """The loop's tasks that run an ASGI application for a WebSocket connection."""
    return [
        t
        for t in asyncio.all_tasks()
        if "run_asgi" in getattr(t.get_coro(), "__qualname__", "") and not t.done()
    ]


async def test_open_connections_keep_no_asgi_task(url: str) -> None:
    sockets = [await connected(url, f"idle{i}") for i in range(CONNECTIONS)]
    for ws in sockets:
        await command(ws, 2, "subscribe", channel="chat:idle")
    assert asgi_tasks() == []
    # ... and they are alive: a publication reaches every one of them.
    publisher = await connected(url, "publisher")
    await command(publisher, 2, "publish", channel="chat:idle", data={"n": 1})
    await publisher.close()
    for ws in sockets:
        while True:
            frame = str(await asyncio.wait_for(ws.recv(), 5))
            if '"pub"' in frame and '"n":1' in frame:
                break
    for ws in sockets:
        await ws.close()


async def test_an_open_connection_keeps_nothing_of_its_handshake(
    served: tuple[Server, str],
) -> None:
    server, url = served
    ws = await connected(url, "lean")
    [client] = [c for c in server.node.clients.values() if c.user == "lean"]
    protocol = client.transport.protocol  # type: ignore[attr-defined]
    assert isinstance(protocol, DetachableWebSocketProtocol) and protocol.detached
    assert protocol.scope is None and protocol.request is None and protocol.response is None
    # websockets' handshake parser would keep the request (all its headers) as a local.
    assert "request" not in protocol.conn.parser.gi_frame.f_locals
    assert (await command(ws, 2, "ping"))["id"] == 2  # frames still parse
    await ws.close()


async def test_commands_sent_just_before_closing_still_run(url: str) -> None:
    """A frame that arrived before the close is handled before the disconnect."""
    reader = await connected(url, "reader")
    await command(reader, 2, "subscribe", channel="chat:last-words")
    writer = await connected(url, "writer")
    commands = [
        {"id": 10 + n, "method": "publish", "params": {"channel": "chat:last-words", "data": n}}
        for n in range(5)
    ]
    # Each command its own frame, then the close frame, all without waiting for replies.
    for cmd in commands:
        await writer.send(orjson.dumps(cmd).decode())
    await writer.close()
    seen: list[int] = []
    while len(seen) < len(commands):
        for line in str(await asyncio.wait_for(reader.recv(), 5)).splitlines():
            message = orjson.loads(line)
            if message.get("push") == "pub":
                seen.append(message["data"])
    assert seen == list(range(5))
    await reader.close()


async def test_a_peer_that_goes_away_is_unregistered(url: str) -> None:
    ws = await connected(url, "leaver")
    await command(ws, 2, "subscribe", channel="chat:leaving")
    other = await connected(url, "stayer")
    await command(other, 2, "subscribe", channel="chat:leaving")
    presence = await command(other, 3, "presence", channel="chat:leaving")
    assert {c["user"] for c in presence["result"]["clients"].values()} == {"leaver", "stayer"}
    ws.transport.abort()  # no close frame: the TCP connection just ends
    for _ in range(100):
        presence = await command(other, 4, "presence", channel="chat:leaving")
        if len(presence["result"]["clients"]) == 1:
            break
        await asyncio.sleep(0.05)
    assert {c["user"] for c in presence["result"]["clients"].values()} == {"stayer"}
    await other.close()


async def test_writable_flag_wakes_its_waiters() -> None:
    flag = WritableFlag()
    assert flag.is_set()
    assert await flag.wait() is True  # set: no wait at all
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    flag.clear()
    cancelled = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    flag.set()  # a cancelled waiter is not woken twice, nothing raises
    assert flag.is_set()


async def test_compressed_and_plain_connections_get_the_same_fan_out() -> None:
    """With compression on, each connection deflates its own frames; plain ones share theirs."""
    async with serving(websocket_compression=True) as (_, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        token = mint_token(JWT_SECRET, "squeezed")
        sockets = []
        for compression in ("deflate", None, "deflate", None):
            ws = await websockets.connect(url, compression=compression, max_queue=None)
            await command(ws, 1, "connect", token=token)
            await command(ws, 2, "subscribe", channel="chat:squeeze")
            sockets.append(ws)
        assert [bool(ws.protocol.extensions) for ws in sockets] == [True, False, True, False]
        publisher = await connected(url, "presser")
        for n in range(3):
            await command(publisher, 10 + n, "publish", channel="chat:squeeze", data={"n": n})
        for ws in sockets:
            got: list[int] = []
            while len(got) < 3:
                for line in str(await asyncio.wait_for(ws.recv(), 5)).splitlines():
                    message = orjson.loads(line)
                    if message.get("push") == "pub":
                        got.append(message["data"]["n"])
            assert got == [0, 1, 2]
            await ws.close()
        await publisher.close()


async def test_closed_connections_are_let_go_at_once(served: tuple[Server, str]) -> None:
    """Nothing (a connect-deadline timer, say) keeps a closed connection's objects alive."""
    server, url = served
    sockets = [await connected(url, f"gone{i}") for i in range(10)]
    never = await websockets.connect(url, compression=None)  # closes before connecting
    await never.close()
    for ws in sockets:
        await ws.close()
    await until_no_clients(server)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, Client) and o.node is server.node]
    assert alive == []


async def test_no_connect_command_in_time_closes_with_3007() -> None:
    async with serving(connect_timeout=0.3) as (server, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        silent = await websockets.connect(url, compression=None)
        prompt = await connected(url, "prompt")  # connected in time: stays
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(silent.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3007
        await asyncio.sleep(0.5)
        assert (await command(prompt, 2, "ping"))["id"] == 2
        assert [c.user for c in server.node.clients.values()] == ["prompt"]
        await prompt.close()


@pytest.mark.parametrize("when", ["in the call", "after waiting"])
async def test_a_frame_that_raises_drops_only_its_connection(
    served: tuple[Server, str], monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A bug in handling a frame: raised in the call that delivers it, or in the task that
    runs what had to wait."""
    server, url = served
    bystander = await connected(url, "bystander")
    handle_frame_nowait = Client.handle_frame_nowait

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("a bug")

    def broken(self: Client, frame: bytes | str) -> Coroutine[Any, Any, None] | None:
        if "boom" not in str(frame):
            return handle_frame_nowait(self, frame)
        if when == "in the call":
            raise RuntimeError("a bug")
        return fails_later()

    monkeypatch.setattr(Client, "handle_frame_nowait", broken)
    victim = await connected(url, "victim")
    await victim.send('{"id": 2, "method": "ping", "params": {"boom": 1}}')
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(victim.recv(), 5)
    for _ in range(100):
        if all(c.user != "victim" for c in server.node.clients.values()):
            break
        await asyncio.sleep(0.02)
    assert [c.user for c in server.node.clients.values()] == ["bystander"]
    assert (await command(bystander, 2, "ping"))["id"] == 2
    await bystander.close()


async def test_a_flood_of_commands_waits_in_the_kernel_and_is_answered_in_order(
    served: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the handler is busy, reading stops once INBOX_FRAMES frames wait; none is lost."""
    server, url = served
    released = asyncio.Event()
    handle_frame_nowait = Client.handle_frame_nowait

    async def hold_then(self: Client, frame: bytes | str) -> None:
        await released.wait()
        rest = handle_frame_nowait(self, frame)
        if rest is not None:
            await rest

    def held(self: Client, frame: bytes | str) -> Coroutine[Any, Any, None] | None:
        if '"hold"' in str(frame):
            return hold_then(self, frame)
        return handle_frame_nowait(self, frame)

    monkeypatch.setattr(Client, "handle_frame_nowait", held)
    ws = await connected(url, "flooder")
    protocol = only_protocol(server)
    assert protocol.inbox is not None
    flood = 2000
    padding = "x" * 1000  # 2 MB in all: far more than one read takes from the socket
    await ws.send('{"id": 2, "method": "ping", "params": {"hold": 1}}')
    for cid in range(3, flood + 3):
        await ws.send(f'{{"id": {cid}, "method": "ping", "params": {{"pad": "{padding}"}}}}')
    for _ in range(100):
        if protocol.read_paused:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # a server that kept reading would take in more by now
    waiting = len(protocol.inbox._pending)
    assert protocol.read_paused
    assert INBOX_FRAMES <= waiting < flood // 2, waiting
    released.set()
    assert await reply_ids(ws, flood + 1) == list(range(2, flood + 3))
    assert not protocol.read_paused
    await ws.close()


async def test_a_steady_stream_of_commands_does_not_pause_reading(
    served: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the bound, frames are read ahead: uvicorn's pause per frame is skipped."""
    server, url = served
    ws = await connected(url, "steady")
    protocol = only_protocol(server)
    paused = 0
    pause_reading = protocol.transport.pause_reading

    def counted() -> None:
        nonlocal paused
        paused += 1
        pause_reading()

    monkeypatch.setattr(protocol.transport, "pause_reading", counted)
    for cid in range(2, 52):
        await ws.send(f'{{"id": {cid}, "method": "ping"}}')
    assert await reply_ids(ws, 50) == list(range(2, 52))
    assert paused == 0
    await ws.close()


async def test_closed_connections_leave_no_cyclic_garbage(served: tuple[Server, str]) -> None:
    """Freed by reference counting when they end, not by a later full cyclic-GC pass.

    With thousands of connections open a full pass takes 100 ms or more (that is
    everyone's latency), so the garbage of closed ones must not wait for it. Covers
    a client that closes, one the server disconnects, one that never sends connect.
    """
    server, url = served
    subscriber = await connected(url, "leaving")
    await command(subscriber, 2, "subscribe", channel="chat:gc")
    kicked = await connected(url, "kicked")
    silent = await websockets.connect(url, compression=None)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await command(kicked, 2, "publish", channel="chat:gc", data={"n": 1})
        await subscriber.close()
        await silent.close()
        await server.node.disconnect_user("kicked")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(kicked.recv(), 5)
        await until_no_clients(server)
        await asyncio.sleep(0.1)  # the server's side of the closing handshakes
        gc.collect()
        server_side = (Client, DetachableWebSocketProtocol, websockets.ServerProtocol)
        cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, server_side)]
        assert cyclic == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_keepalive_pings_run_on_the_nodes_timer() -> None:
    """Detached connections are pinged from the node's one timer: no timer of their own."""

    def connection_timers() -> list[asyncio.TimerHandle]:
        """Live timers whose callback is a server connection's (the clients here have theirs)."""
        return [
            o
            for o in gc.get_objects()
            if isinstance(o, asyncio.TimerHandle)
            and not o.cancelled()
            and isinstance(getattr(o._callback, "__self__", None), DetachableWebSocketProtocol)
        ]

    async with serving(ping_interval=0.3, ping_timeout=0.3) as (server, port):
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        sockets = [await connected(url, f"pinged{i}") for i in range(10)]
        assert connection_timers() == []
        protocols = [c.transport.protocol for c in server.node.clients.values()]
        assert all(isinstance(p, DetachableWebSocketProtocol) for p in protocols)
        await asyncio.sleep(1.2)  # several ping/pong rounds; the clients answer by themselves
        assert all(p.last_ping_rtt > 0 for p in protocols)  # type: ignore[union-attr]
        assert [(await command(ws, 2, "ping"))["id"] for ws in sockets] == [2] * 10
        for ws in sockets:
            await ws.close()
        await until_no_clients(server)
        assert len(server.node.deadlines) == 0  # nothing left on the timer for them


async def test_whole_text_frames_skip_uvicorns_asgi_message(
    served: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DetachableWebSocketProtocol.handle_text hands a whole text frame straight to the inbox:
    no ASGI message dict, no pause-and-resume of reading per frame."""
    _, url = served
    ws = await connected(url, "direct")
    via_asgi = 0
    original = DetachableWebSocketProtocol.send_receive_event_to_app

    def counted(self: DetachableWebSocketProtocol) -> None:
        nonlocal via_asgi
        via_asgi += 1
        original(self)

    monkeypatch.setattr(DetachableWebSocketProtocol, "send_receive_event_to_app", counted)
    for cid in range(2, 12):
        await ws.send(orjson.dumps({"id": cid, "method": "ping", "params": {}}).decode())
    assert await reply_ids(ws, 10) == list(range(2, 12))
    assert via_asgi == 0
    await ws.close()


async def test_a_fragmented_message_is_one_frame_of_commands(served: tuple[Server, str]) -> None:
    """Fragments take uvicorn's path (it joins them); the commands in them are answered."""
    _, url = served
    ws = await connected(url, "fragments")
    text = '{"id": 2, "method": "ping", "params": {}}\n{"id": 3, "method": "ping", "params": {}}'
    await ws.send([text[:10], text[10:30], text[30:]])  # one message in three frames
    assert await reply_ids(ws, 2) == [2, 3]
    await ws.close()


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(served: tuple[Server, str]) -> None:
    """As uvicorn answers it; the other connections go on."""
    _, url = served
    bystander = await connected(url, "bystander")
    ws = await connected(url, "bad-utf8")
    ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"id": 2, "method": "\xff"}'))
    ws.send_data()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert (await command(bystander, 2, "ping"))["id"] == 2
    await bystander.close()
