"""deploy/nginx/nginx.conf in a real nginx, in front of two real kizuna nodes on one Redis.

The config is used as shipped, with only the node addresses and the listen
ports swapped for this machine's free ones. What it must do: upgrade
WebSockets, stream SSE without buffering, hold long-polls, and let a message
published through the balancer reach subscribers on both nodes.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from kizuna.core.auth import mint_token
from tests.deploy.tools import DEPLOY, require_tool
from tests.support.processes import (
    JWT_SECRET,
    KizunaProcess,
    RedisProcess,
    free_port,
    wait_for_port,
)
from tests.transports.sse_reader import collect, events

TOKEN = mint_token(JWT_SECRET, "through-nginx")


@pytest.fixture(scope="module")
def cluster(redis_server: RedisProcess) -> Iterator[tuple[str, list[KizunaProcess]]]:
    nginx = require_tool("nginx")
    nodes = [KizunaProcess(args=["--broker", redis_server.url]).start() for _ in range(2)]
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    text = text.replace("kizuna-1:8000", f"127.0.0.1:{nodes[0].port}")
    text = text.replace("kizuna-2:8000", f"127.0.0.1:{nodes[1].port}")
    text = text.replace("kizuna-1:50051", f"127.0.0.1:{free_port()}")
    text = text.replace("kizuna-2:50051", f"127.0.0.1:{free_port()}")
    port, grpc_port = free_port(), free_port()
    text = text.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text = text.replace("listen 50051 http2;", f"listen 127.0.0.1:{grpc_port} http2;")
    with tempfile.TemporaryDirectory(prefix="kizuna-nginx-") as prefix:
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(text)
        for sub in ("logs", "tmp"):
            (Path(prefix) / sub).mkdir()
        globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;"
        check = subprocess.run(
            [nginx, "-t", "-p", prefix, "-c", str(conf), "-g", globals_],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(
            [nginx, "-p", prefix, "-c", str(conf), "-g", globals_],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            yield f"127.0.0.1:{port}", nodes
        finally:
            proc.terminate()
            proc.wait(10)
            for node in nodes:
                node.stop()


async def _subscriber(url: str, channel: str) -> object:
    ws = await connect(url)
    await ws.send(orjson.dumps({"id": 1, "method": "connect", "params": {"token": TOKEN}}))
    await ws.recv()
    await ws.send(orjson.dumps({"id": 2, "method": "subscribe", "params": {"channel": channel}}))
    await ws.recv()
    return ws


async def _next_pub(ws: object) -> dict[str, object]:
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)  # type: ignore[attr-defined]
        for line in frame.split("\n"):
            message = orjson.loads(line)
            if message.get("push") == "pub":
                return message  # type: ignore[no-any-return]


async def test_websocket_through_nginx_reaches_both_nodes(
    cluster: tuple[str, list[KizunaProcess]],
) -> None:
    address, nodes = cluster
    channel = "chat:nginx-ws"
    via = await _subscriber(f"ws://{address}/connection/websocket", channel)
    direct = [await _subscriber(n.ws_url, channel) for n in nodes]
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        r = await http.post(
            "/connection/publish",
            json={"channel": channel, "data": "hello"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200, r.text
    for ws in [via, *direct]:
        assert (await _next_pub(ws))["data"] == "hello"
        await ws.close()  # type: ignore[attr-defined]


async def test_sse_through_nginx_is_not_buffered(cluster: tuple[str, list[KizunaProcess]]) -> None:
    address, nodes = cluster
    url = f"http://{address}/connection/sse?channels=chat:nginx-sse&token={TOKEN}"
    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url) as response:
        assert response.status_code == 200
        stream = events(response)
        await collect(stream, {"connected"}, 1)
        for i in range(3):
            started = time.monotonic()
            nodes[i % 2].api("publish", channel="chat:nginx-sse", data=i)
            [event] = await collect(stream, {"pub"}, 1, timeout=2)
            assert event.data["data"] == i
            assert time.monotonic() - started < 1.0  # streamed, not held in a buffer


async def test_long_poll_through_nginx_waits_and_wakes(
    cluster: tuple[str, list[KizunaProcess]],
) -> None:
    address, nodes = cluster
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10, headers=auth) as http:
        first = await http.get(
            "/connection/poll", params={"channels": "chat:nginx-lp", "timeout": 0}
        )
        cursor = first.json()["cursor"]

        async def later() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(nodes[1].api, "publish", channel="chat:nginx-lp", data="late")

        task = asyncio.create_task(later())
        r = await http.get(
            "/connection/poll", params={"channels": "chat:nginx-lp", "cursor": cursor, "timeout": 5}
        )
        await task
        assert [p["data"] for p in r.json()["publications"]] == ["late"]
