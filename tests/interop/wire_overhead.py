"""Bytes on the wire per publication, per subscribing transport (the figures in docs/transports.md).

Not a test (timings and sizes belong in measurements, not assertions): run it
with ``.venv/bin/python -m tests.interop.wire_overhead``. It starts a real
``kizuna serve`` (memory broker, gRPC on), puts a counting TCP proxy in front
of one subscriber of each kind (the interop test's adapters), publishes
``N`` small chat messages through the server API one at a time — each waits
until the subscriber has it, so nothing is coalesced: the worst case for
per-message overhead — and prints the bytes the subscriber's connections
carried each way per publication, how many TCP connections it opened, and
the time from the publish request to the delivery (through the proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx

from tests.e2e.clients import PyClient
from tests.grpc.conftest import GrpcNode
from tests.interop.subscribers import (
    GrpcSubscriber,
    LongPollSubscriber,
    NativeSubscriber,
    SocketIOSubscriber,
    SseSubscriber,
    Subscriber,
)
from tests.socketio.clients import SioDriver
from tests.support.processes import API_KEY

N = 200
PAYLOAD = {"userId": "dev-user", "content": "hello", "timestamp": 1764201600000}
"""62 bytes of JSON."""


class CountingProxy:
    """Forwards TCP to ``upstream_port`` on 127.0.0.1, counting bytes each way."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.down = self.up = self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def reset(self) -> None:
        self.down = self.up = self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True),
            self._pipe(up_reader, writer, upstream=False),
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if upstream:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()


Stack = contextlib.AsyncExitStack
Opener = Callable[[Stack, str, CountingProxy, str], Awaitable[Subscriber]]


async def measure(node: GrpcNode, name: str, opener: Opener, channel: str, grpc_: bool) -> str:
    proxy = await CountingProxy(node.grpc_port if grpc_ else node.port).start()
    async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient() as http:
        stack.push_async_callback(proxy.aclose)
        sub = await opener(stack, f"http://127.0.0.1:{proxy.port}", proxy, channel)
        stack.push_async_callback(sub.aclose)
        proxy.reset()
        took = []
        for _ in range(N):
            started = time.perf_counter()
            response = await http.post(
                f"{node.url}/api/publish",
                json={"channel": channel, "data": PAYLOAD},
                headers={"Authorization": f"apikey {API_KEY}"},
            )
            offset = response.json()["result"]["offset"]
            await sub.until(lambda d, offset=offset: d.offset == offset)
            took.append(time.perf_counter() - started)
        took.sort()
        return (
            f"| {name} | {proxy.down / N:.0f} | {proxy.up / N:.0f} | {proxy.connections} "
            f"| {statistics.median(took) * 1000:.2f} | {took[int(N * 0.9)] * 1000:.2f} |"
        )


async def main() -> None:
    node = GrpcNode().start()
    driver = await SioDriver.start()
    try:

        async def websocket(stack: Stack, base: str, proxy: CountingProxy, ch: str) -> Subscriber:
            client = await PyClient.open(base.replace("http", "ws", 1) + "/connection/websocket")
            return await NativeSubscriber.start("websocket", client, "u", ch)

        async def sse(stack: Stack, base: str, proxy: CountingProxy, ch: str) -> Subscriber:
            return await SseSubscriber.start("sse", base, "u", ch)

        async def longpoll(stack: Stack, base: str, proxy: CountingProxy, ch: str) -> Subscriber:
            return await LongPollSubscriber.start("long-poll", [base], "u", ch)

        async def sio_websocket(
            stack: Stack, base: str, proxy: CountingProxy, ch: str
        ) -> Subscriber:
            return await SocketIOSubscriber.start("sio", driver, base, "websocket", "u", ch)

        async def sio_polling(stack: Stack, base: str, proxy: CountingProxy, ch: str) -> Subscriber:
            return await SocketIOSubscriber.start("sio", driver, base, "polling", "u", ch)

        async def grpc_stream(stack: Stack, base: str, proxy: CountingProxy, ch: str) -> Subscriber:
            target = f"127.0.0.1:{proxy.port}"
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(target))
            return await GrpcSubscriber.start("grpc", channel, "u", ch)

        kinds: list[tuple[str, Opener, bool]] = [
            ("native WebSocket", websocket, False),
            ("SSE", sse, False),
            ("long-poll (timeout 5 s)", longpoll, False),
            ("Socket.IO over WebSocket", sio_websocket, False),
            ("Socket.IO over polling", sio_polling, False),
            ("gRPC SubscribeMessages", grpc_stream, True),
        ]
        size = len(json.dumps(PAYLOAD, separators=(",", ":")))
        print(f"{N} publications of a {size}-byte payload, one at a time")
        print("| transport | bytes down | bytes up | new TCP connections | p50 ms | p90 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for i, (name, opener, grpc_) in enumerate(kinds):
            print(await measure(node, name, opener, f"chat:overhead-{i}", grpc_))
    finally:
        await driver.aclose()
        node.stop()


if __name__ == "__main__":
    asyncio.run(main())
