"""The live dashboard page (/dashboard) in chromium: it shows the node's figures under load."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kizuna.core.auth import mint_token
from tests.browser.conftest import Browser
from tests.support.processes import JWT_SECRET, KizunaProcess


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()


async def _load(url: str, stop: asyncio.Event) -> None:
    """Six subscribers on one channel, one publication every 20 ms until told to stop."""
    sockets = []
    for i in range(6):
        ws = await connect(url)
        token = mint_token(JWT_SECRET, f"dash-{i}")
        await ws.send(orjson.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
        await ws.recv()
        await ws.send(
            orjson.dumps({"id": 2, "method": "subscribe", "params": {"channel": "chat:d"}})
        )
        await ws.recv()
        sockets.append(ws)
    readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
    n = 10
    while not stop.is_set():
        pub = {"id": n, "method": "publish", "params": {"channel": "chat:d", "data": n}}
        await sockets[0].send(orjson.dumps(pub))
        n += 1
        await asyncio.sleep(0.02)
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers)


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("–", "nan"))


async def test_dashboard_shows_live_figures_under_load(browser: Browser, artifacts: Path) -> None:
    with KizunaProcess() as server:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(server.ws_url, stop))
        try:
            await browser.open("dash", server.url + "/dashboard")
            # Rates need two snapshots a second apart, then they must show the load.
            await browser.wait("dash", "Number(document.getElementById('active').textContent) >= 6")
            await browser.wait(
                "dash",
                "parseFloat(document.getElementById('msgs').textContent.replace(/,/g, '')) > 50",
            )
            await browser.wait("dash", "document.getElementById('p99').textContent.endsWith('ms')")
            await browser.wait("dash", "document.getElementById('broker').textContent === 'up'")
            # The process panel: resident memory in MB, descriptors "open of limit".
            assert _number(await browser.text("dash", "#rss")) > 10
            assert " of " in await browser.text("dash", "#fds")
            assert _number(await browser.text("dash", "#gc-full")) >= 1  # the start-up's
            transports = await browser.text("dash", "#transports tbody")
            assert "websocket" in transports
            assert _number(await browser.text("dash", "#pubs")) > 10
            await asyncio.sleep(4)  # a few more snapshots, so the artifact shows the sparklines
            await browser.call("screenshot", page="dash", path=str(artifacts / "dashboard.png"))
        finally:
            stop.set()
            await load
    assert (artifacts / "dashboard.png").stat().st_size > 10_000
