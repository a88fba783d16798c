"""Ended connections and requests are freed by reference counting, on every transport.

Whatever a finished connection leaves in a reference cycle waits for the cyclic
GC — for objects that lived a while, a *full* pass, which walks every object the
process holds: with thousands of connections open that is 100 ms or more of
everyone's latency (measured in bench/RESULTS.md), and memory held until then.
Each test runs a server in this event loop with the automatic GC off, ends some
connections, then collects with ``DEBUG_SAVEALL`` and lists the server-side
objects that only the collector could free. The clients are real (httpx,
grpcio); their own garbage is not counted. The native WebSocket's case is in
test_websocket_detached.py.

Not here: Socket.IO. python-engineio (4.15) builds a class per polling request
(``translate_request``) and leaves its WebSocket handler's tasks and frames in a
cycle through a caught exception's traceback — its code, not kizuna's.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import grpc
import httpx

from kizuna.core.auth import mint_token
from kizuna.server import Server
from kizuna.transports.grpc_gen import chat_pb2, chat_pb2_grpc
from tests.support.inprocess import serving, until_no_clients
from tests.support.processes import JWT_SECRET, free_port

SERVER_SIDE = ("kizuna.", "uvicorn.", "starlette.", "websockets.server")
"""Modules whose objects are the server's (the clients here are httpx and grpcio)."""


@contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """Collects, at the end of the block, the server-side objects only the GC freed."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(SERVER_SIDE)
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def all_gone(server: Server) -> None:
    await until_no_clients(server)
    await asyncio.sleep(0.1)  # the last closing handshakes


@asynccontextmanager
async def http_client(port: int) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {mint_token(JWT_SECRET, 'writer')}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10
    ) as client:
        yield client


async def test_sse_streams_and_http_requests() -> None:
    async with serving() as (server, port), http_client(port) as http:
        with cyclic_garbage() as found:
            for i in range(3):
                url = f"/connection/sse?channels=chat:gc&token={mint_token(JWT_SECRET, f'r{i}')}"
                async with http.stream("GET", url) as response:
                    async for _ in response.aiter_lines():
                        break
            for i in range(3):
                r = await http.post("/connection/publish", json={"channel": "chat:gc", "data": i})
                assert r.status_code == 200, r.text
            await all_gone(server)
        assert found == []


async def test_long_polling() -> None:
    async with serving() as (server, port), http_client(port) as http:
        with cyclic_garbage() as found:
            first = await http.get(
                "/connection/poll", params={"channels": "chat:lp", "cursor": "", "timeout": 0}
            )
            assert first.status_code == 200, first.text
            await http.post("/connection/publish", json={"channel": "chat:lp", "data": 1})
            cursor = first.json()["cursor"]
            second = await http.get(
                "/connection/poll", params={"channels": "chat:lp", "cursor": cursor, "timeout": 1}
            )
            assert [p["data"] for p in second.json()["publications"]] == [1]
            await all_gone(server)
        assert found == []


async def test_grpc_streams_and_calls() -> None:
    grpc_port = free_port()
    async with serving(grpc_port=grpc_port) as (server, _):
        with cyclic_garbage() as found:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                metadata = (("authorization", f"Bearer {mint_token(JWT_SECRET, 'g')}"),)
                stream = stub.SubscribeMessages(
                    chat_pb2.SubscriptionRequest(channels=["chat:grpc-gc"]), metadata=metadata
                )
                await stub.SendMessage(
                    chat_pb2.ChatMessage(channel="chat:grpc-gc", content="hi"), metadata=metadata
                )
                stream.cancel()
            await all_gone(server)
        assert found == []
