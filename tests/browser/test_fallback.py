"""The browser client's fallbacks in chromium: SSE + HTTP publish, and long-polling.

The page is served through :class:`HttpProxy`, which refuses WebSocket upgrades
with a 403 (and SSE too, to force long-polling) the way a restrictive proxy
does, while a second page talks WebSocket to the server directly. Every test
runs once per fallback: the same guarantees must hold on each — every message
once and in order, exact recovery after a dropped stream, gaps reported,
tokens refreshed without a disconnect.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import Browser
from tests.browser.http_proxy import HttpProxy
from tests.browser.test_demo import MESSAGES, chat_url, joined, messages, say
from tests.browser.test_kizuna_js import FAST, load, states
from tests.client.conftest import SERVER_ARGS
from tests.client.support import token
from tests.support.processes import KizunaProcess

FALLBACKS = ["sse", "longpoll"]
TRANSPORT = "document.getElementById('transport')"
CONNECTION_PATHS = ("/connection/sse", "/connection/poll", "/connection/publish")


@pytest.fixture(scope="module")
def kizuna(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KizunaProcess]:
    """One server for the module: `chat` as built in, `tiny` keeps only 2 publications.

    SSE heartbeat comments every 0.5 s, so that a stalled stream is told from an idle one
    within a test's time.
    """
    config = tmp_path_factory.mktemp("fallback") / "kizuna.toml"
    config.write_text(
        "[namespaces.chat]\n"
        "[namespaces.tiny]\nhistory_size = 2\njoin_leave = false\npresence = false\n"
    )
    args = [*SERVER_ARGS, "--config", str(config), "--ping-interval", "0.5"]
    server = KizunaProcess(args=args).start()
    try:
        yield server
    finally:
        # Not SIGTERM: the server would wait ~10 s for long polls whose pages are gone
        # (test_the_server_stops_promptly_with_a_long_poll_held shows that bug).
        server.kill()


@pytest.fixture(params=FALLBACKS)
async def fallback(
    request: pytest.FixtureRequest, kizuna: KizunaProcess
) -> AsyncIterator[tuple[str, HttpProxy]]:
    """The fallback under test, and a proxy in front of the server that leaves only it open."""
    async with HttpProxy(kizuna.port) as proxy:
        proxy.refuse_websocket = True
        proxy.refuse_sse = request.param == "longpoll"
        yield request.param, proxy


def decode_cursor(text: str) -> dict[str, tuple[int, str]]:
    rows = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return {channel: (offset, epoch) for channel, offset, epoch in rows}


def check_credentials_stay_out_of_urls(proxy: HttpProxy, user_token: str) -> None:
    """Every request to a /connection/ endpoint carried the token as a header, never in the URL."""
    used = [r for r in proxy.requests if r.path in CONNECTION_PATHS and not r.refused]
    assert used
    probes = [r for r in used if not r.query.get("channels")]  # a transport's open()
    for r in used:
        assert "token" not in r.query and user_token not in r.target, r.target
        if r not in probes:
            assert r.headers.get("authorization", "").startswith("Bearer "), r.target


async def test_demo_chat_between_websocket_and_a_fallback(
    browser: Browser,
    kizuna: KizunaProcess,
    fallback: tuple[str, HttpProxy],
    artifacts: Path,
) -> None:
    """Bob talks WebSocket; Ann's WebSocket is refused by a proxy: she falls back, and sees it."""
    name, proxy = fallback
    room = f"fb-{name}"
    await browser.open("bob", chat_url(kizuna.url, "bob", "Bob", room))
    await joined(browser, "bob")
    await say(browser, "bob", "said before Ann came")
    await messages(browser, "bob", 1)

    await browser.open("ann", chat_url(proxy.url, "ann", "<b>Ann</b>", room))
    await joined(browser, "ann")
    # The backlog came through the fallback too (history read over the poll endpoint).
    assert await messages(browser, "ann", 1) == ["said before Ann came"]
    label = {"sse": "via SSE (fallback)", "longpoll": "via long-polling (fallback)"}[name]
    assert await browser.text("ann", "#transport") == label
    assert await browser.eval("ann", f"{TRANSPORT}.dataset.transport") == name
    assert await browser.text("bob", "#transport") == "via WebSocket"

    lines = []
    for i in range(3):  # interleaved both ways, as fast as the pages can send
        lines += [f"ann {i}", f"bob {i}"]
        await say(browser, "ann", f"ann {i}")
        await say(browser, "bob", f"bob {i}")
    # Each page shows each message exactly once; one page's own messages in its own order.
    for page in ("ann", "bob"):
        shown = await messages(browser, page, 7)
        await asyncio.sleep(0.2)  # a duplicate would arrive by now
        shown = list(await browser.eval(page, MESSAGES))
        assert sorted(shown) == sorted(["said before Ann came", *lines]), page
        for who in ("ann", "bob"):
            assert [m for m in shown if m.startswith(who)] == [f"{who} {i}" for i in range(3)]
    assert list(await browser.eval("ann", MESSAGES)) == list(await browser.eval("bob", MESSAGES))

    # The markup in Ann's name is text on both pages, and her transport label is plain text.
    for page in ("ann", "bob"):
        assert await browser.eval(page, "document.querySelectorAll('#messages b').length") == 0
    assert await browser.eval("ann", f"{TRANSPORT}.children.length") == 0

    refused = [r for r in proxy.requests if r.refused]
    assert refused and all(r.websocket or r.path == "/connection/sse" for r in refused)
    check_credentials_stay_out_of_urls(proxy, token("ann"))
    size = await browser.call(
        "screenshot", page="ann", path=str(artifacts / f"chat-fallback-{name}.png")
    )
    assert size > 10_000


async def test_a_dropped_stream_resumes_exactly(
    browser: Browser, kizuna: KizunaProcess, fallback: tuple[str, HttpProxy]
) -> None:
    """The stream (or poll) is cut twice under a steady publisher: every message arrives once."""
    name, proxy = fallback
    channel = f"chat:drop-{name}"
    await load(browser, proxy.url)
    await browser.eval(
        "page",
        f"""(async () => {{
          const c = window.client = new k.Client(location.origin, {{
            token: {json.dumps(token())}, {FAST}}});
          track(c);
          await c.connect();
          await c.subscribe({json.dumps(channel)}, {{handler: record}});
          return c.transport;
        }})()""",
    )
    assert await browser.eval("page", "client.transport") == name

    stop = asyncio.Event()

    async def publish() -> int:
        n = 0
        while not stop.is_set():
            n += 1
            response = await asyncio.to_thread(kizuna.api, "publish", channel=channel, data=n)
            assert response.status_code == 200
            await asyncio.sleep(0.01)
        return n

    producer = asyncio.create_task(publish())
    for cut in range(2):
        await asyncio.sleep(0.3)
        # Chromium retries a reset poll on a new connection by itself (losslessly: same
        # cursor), so the poll's outage must also refuse that retry to be seen at all.
        proxy.refusing = name == "longpoll"
        assert proxy.cut_streams() >= 1
        await browser.wait(
            "page", f"t.states.filter(s => s.state === 'disconnected').length >= {cut + 1}"
        )
        proxy.refusing = False
        await browser.wait(
            "page", f"t.states.filter(s => s.state === 'connected').length >= {cut + 2}"
        )
    await asyncio.sleep(0.2)
    stop.set()
    total = await producer
    await browser.wait("page", f"t.data.length >= {total}", timeout=15)
    assert await browser.eval("page", "t.data") == list(range(1, total + 1))

    subscribed = await browser.eval("page", "t.events.filter(e => e.type === 'subscribed')")
    assert [(e["resubscribed"], e["recovered"], e["gap"]) for e in subscribed] == [
        (False, False, False),
        (True, True, False),
        (True, True, False),
    ]
    # How many came back through recovery rather than live depends on how fast the
    # reconnect beat the producer on this machine; exactness is what is asserted above.
    drops = [s for s in await states(browser) if s["state"] == "disconnected"]
    assert len(drops) >= 2  # the cuts, and for long-poll the attempts the proxy refused
    assert all((s["code"], s["reconnect"]) == (1006, True) for s in drops)
    connected = await browser.eval("page", "t.states.filter(s => s.state === 'connected').length")
    assert connected == 3

    # The wire was reopened from the positions: a cursor (SSE: Last-Event-ID) past offset 0.
    if name == "sse":
        cursors = [r.headers.get("last-event-id") for r in proxy.seen("/connection/sse")]
    else:
        cursors = [r.query.get("cursor", [""])[0] for r in proxy.seen("/connection/poll")]
        cursors = [c for c in cursors if c and decode_cursor(c).get(channel)]
    resumed = [decode_cursor(c)[channel][0] for c in cursors if c]
    assert len(resumed) >= 3 and resumed[-1] > 0
    # WebSocket was refused twice, then tried last: the later reconnects went straight on.
    assert len([r for r in proxy.requests if r.websocket]) == 2
    await browser.eval("page", "client.close().then(() => true)")


async def test_gaps_are_reported_never_silent(
    browser: Browser, kizuna: KizunaProcess, fallback: tuple[str, HttpProxy]
) -> None:
    """`tiny` keeps 2 publications: missing 5 is a gap, found by the live wire or a reconnect."""
    name, proxy = fallback
    channel = f"tiny:gap-{name}"

    def publish(n: int) -> None:
        assert kizuna.api("publish", channel=channel, data=n).status_code == 200

    await load(browser, proxy.url)
    # 1. The live wire's request is held while 5 publications pass: the server says gap.
    proxy.hold = lambda r: bool(r.query.get("channels")) and r.query.get("timeout") != ["0"]
    await browser.eval(
        "page",
        f"""(async () => {{
          const c = window.client = new k.Client(location.origin, {{
            token: {json.dumps(token())}, {FAST}}});
          track(c);
          await c.connect();
          window.t.subscribing = c.subscribe({json.dumps(channel)}, {{handler: record}});
          return true;
        }})()""",
    )
    for _ in range(100):
        if proxy.held:
            break
        await asyncio.sleep(0.05)
    assert proxy.held, "the client never opened its live wire"
    for n in range(1, 6):
        await asyncio.to_thread(publish, n)
    proxy.release()
    await browser.wait("page", "t.events.filter(e => e.type === 'subscribed').length >= 2")
    await asyncio.to_thread(publish, 6)
    await browser.wait("page", "t.data.includes(6)")

    # 2. The page is away (connections refused) while 5 more pass: its reconnect says gap.
    proxy.refusing = True
    proxy.cut()
    await browser.wait("page", "t.states.some(s => s.state === 'disconnected')")
    for n in range(7, 12):
        await asyncio.to_thread(publish, n)
    proxy.refusing = False
    await browser.wait("page", "t.events.filter(e => e.type === 'subscribed').length >= 3")
    await asyncio.to_thread(publish, 12)
    await browser.wait("page", "t.data.includes(12)")

    events = await browser.eval(
        "page",
        "t.events.map(e => e.type === 'publication' ? e.data"
        " : [e.resubscribed, e.recovered, e.gap])",
    )
    # Before a gap, or after it: never a publication from inside it, never one twice.
    assert events == [[False, False, False], [True, False, True], 6, [True, False, True], 12]
    assert not [line for line in await browser.log("page") if "pageerror" in line]
    await browser.eval("page", "client.close().then(() => true)")


async def test_tokens_are_refreshed_on_the_fallback_and_refusals_are_final(
    browser: Browser, kizuna: KizunaProcess, fallback: tuple[str, HttpProxy]
) -> None:
    """A 2-second token is replaced on the open wire; a bad token without a callback stops."""
    name, proxy = fallback
    channel = f"chat:token-{name}"
    fresh = token("ann", ttl=3600)
    await load(browser, proxy.url)
    await browser.eval(
        "page",
        f"""(async () => {{
          window.calls = 0;
          const c = window.client = new k.Client(location.origin, {{
            token: {json.dumps(token("ann", ttl=2))},
            getToken: async () => {{ window.calls += 1; return {json.dumps(fresh)}; }}, {FAST}}});
          track(c);
          await c.connect();
          await c.subscribe({json.dumps(channel)}, {{handler: record}});
          return true;
        }})()""",
    )
    await browser.wait("page", "window.calls >= 1")
    await asyncio.sleep(1.2)  # past the first token's expiry
    response = await asyncio.to_thread(kizuna.api, "publish", channel=channel, data="after")
    assert response.status_code == 200
    await browser.wait("page", "t.data.includes('after')")
    mine = f"client.publish({json.dumps(channel)}, 'mine').then(p => p.offset)"
    assert await browser.eval("page", mine) == 2
    assert [s["state"] for s in await states(browser)] == ["connecting", "connected"]
    assert await browser.eval("page", "window.calls") == 1
    # The wire was reopened (SSE) or polled (long-poll) with the new token, in a header.
    wire = "/connection/sse" if name == "sse" else "/connection/poll"
    assert any(r.headers.get("authorization") == f"Bearer {fresh}" for r in proxy.seen(wire))
    check_credentials_stay_out_of_urls(proxy, fresh)

    outcome = await browser.eval(
        "page",
        f"""(async () => {{
          const c = new k.Client(location.origin, {{token: 'not-a-jwt', {FAST}}});
          await c.connect();
          return c.subscribe('chat:refused')
            .then(() => 'subscribed', (e) => `${{e.name}} ${{e.code}}`);
        }})()""",
    )
    assert outcome == "Disconnected 4002"
    await browser.eval("page", "client.close().then(() => true)")


async def test_a_stalled_sse_stream_is_found_by_the_heartbeat(
    browser: Browser, kizuna: KizunaProcess
) -> None:
    """An idle stream lives on heartbeat comments; a stalled one is closed (1011), and recovered."""
    channel = "chat:sse-stall"
    async with HttpProxy(kizuna.port) as proxy:
        proxy.refuse_websocket = True
        await load(browser, proxy.url)
        await browser.eval(
            "page",
            f"""(async () => {{
              const c = window.client = new k.Client(location.origin, {{
                token: {json.dumps(token())}, {FAST}, pingInterval: 700, pingTimeout: 400}});
              track(c);
              await c.connect();
              await c.subscribe({json.dumps(channel)}, {{handler: record}});
              return c.transport;
            }})()""",
        )
        await asyncio.sleep(1.6)  # idle, past two heartbeat timeouts: the comments keep it up
        assert [s["state"] for s in await states(browser)] == ["connecting", "connected"]
        assert proxy.stall_streams() == 1
        for i in range(3):
            await asyncio.to_thread(kizuna.api, "publish", channel=channel, data=i)
        await browser.wait("page", "t.data.length >= 3")
        assert await browser.eval("page", "t.data") == [0, 1, 2]
        drop = next(s for s in await states(browser) if s["state"] == "disconnected")
        assert (drop["code"], drop["reason"], drop["reconnect"]) == (1011, "ping timeout", True)
        again = await browser.eval("page", "t.events.filter(e => e.resubscribed)")
        assert [(e["recovered"], e["gap"], e["missed"]) for e in again] == [(True, False, 3)]
        await browser.eval("page", "client.close().then(() => true)")


async def test_the_server_stops_promptly_with_a_long_poll_held() -> None:
    """A node that stops should answer its held polls at once, not make shutdown wait."""
    server = KizunaProcess(args=SERVER_ARGS).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            poll = asyncio.create_task(
                http.get(
                    "/connection/poll",
                    params={"channels": "chat:held", "timeout": "30"},
                    headers={"Authorization": f"Bearer {token()}"},
                )
            )
            await asyncio.sleep(0.3)  # held by now: nothing is published
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            try:
                exited = await asyncio.to_thread(server.process.wait, 2.0)
            except subprocess.TimeoutExpired:
                exited = None
            finally:
                poll.cancel()
            assert exited is not None, "still running 2 s after SIGTERM, holding a long poll"
    finally:
        server.kill()
