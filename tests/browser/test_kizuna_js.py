"""kizuna.js in chromium: recovery, heartbeats, tokens, terminal codes, a misbehaving server.

Each test loads a page from the server (through the TCP proxy when the network
must fail), imports ``/static/kizuna.js`` into it and drives a ``Client``
there; what the client saw is kept in ``window.t`` and read back.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import ServerConnection

from kizuna.client import Client
from tests.browser.conftest import Browser
from tests.client.fake_server import (
    FakeServer,
    answer_connect,
    behave,
    hole_then_replay,
    receive_command,
)
from tests.client.support import token
from tests.client.tcp_proxy import TcpProxy
from tests.support.processes import KizunaProcess, free_port

SETUP = """
(async () => {
  window.k = await import('/static/kizuna.js');
  window.t = {states: [], events: [], data: []};
  window.track = (client) => client.on('state', (s) => window.t.states.push({
    state: s.state, code: s.code ?? null, reason: s.reason ?? '', reconnect: s.reconnect ?? null,
    delay: s.delay ?? null, attempt: s.attempt ?? null, at: performance.now()}));
  window.record = (event) => {
    window.t.events.push(event.type === 'publication'
      ? {type: 'publication', data: event.data, offset: event.offset}
      : {type: event.type, recovered: event.recovered, gap: event.gap, missed: event.missed,
         resubscribed: event.resubscribed});
    if (event.type === 'publication') window.t.data.push(event.data);
  };
  return true;
})()
"""

FAST = "backoff: {minDelay: 50, maxDelay: 300}"


async def load(browser: Browser, base: str) -> None:
    await browser.open("page", f"{base}/")
    assert await browser.eval("page", SETUP)


async def states(browser: Browser) -> list[dict[str, object]]:
    value = await browser.eval("page", "window.t.states")
    return list(value)


async def test_every_missed_publication_arrives_once_after_cuts(
    browser: Browser, kizuna: KizunaProcess, proxy: TcpProxy
) -> None:
    await load(browser, f"http://127.0.0.1:{proxy.port}")
    await browser.eval(
        "page",
        f"""(async () => {{
          const c = window.client = new k.Client(location.origin, {{token: {json.dumps(token())},
            {FAST}}});
          track(c);
          await c.connect();
          await c.subscribe('chat:js-stream', {{handler: record}});
          return true;
        }})()""",
    )
    cuts_done = asyncio.Event()
    async with Client(kizuna.ws_url, token=token("pub")) as publisher:

        async def publish() -> int:
            n = after = 0
            while after < 20:
                n += 1
                await publisher.publish("chat:js-stream", n)
                after += cuts_done.is_set()
                await asyncio.sleep(0.004)
            return n

        producer = asyncio.create_task(publish())
        for cut in range(2):
            await asyncio.sleep(0.1)
            proxy.refusing = True
            proxy.cut()
            await browser.wait(
                "page",
                f"t.states.filter(s => s.state === 'disconnected').length >= {cut + 1}",
            )
            await asyncio.sleep(0.15)
            proxy.refusing = False
            await browser.wait(
                "page", f"t.states.filter(s => s.state === 'connected').length >= {cut + 2}"
            )
        cuts_done.set()
        total = await producer
    await browser.wait("page", f"t.data.length >= {total}")
    assert await browser.eval("page", "t.data") == list(range(1, total + 1))
    events = await browser.eval("page", "t.events.filter(e => e.type === 'subscribed')")
    assert [(e["resubscribed"], e["recovered"], e["gap"]) for e in events] == [
        (False, False, False),
        (True, True, False),
        (True, True, False),
    ]
    assert sum(e["missed"] for e in events) > 0
    drops = [s for s in await states(browser) if s["state"] == "disconnected"]
    assert len(drops) >= 2  # the cuts, and attempts the proxy refused
    assert all((s["code"], s["reconnect"]) == (1006, True) for s in drops)


async def test_a_stalled_connection_is_found_by_pinging(
    browser: Browser, kizuna: KizunaProcess, proxy: TcpProxy
) -> None:
    await load(browser, f"http://127.0.0.1:{proxy.port}")
    await browser.eval(
        "page",
        f"""(async () => {{
          const c = window.client = new k.Client(location.origin, {{token: {json.dumps(token())},
            {FAST}, pingInterval: 300, pingTimeout: 300}});
          track(c);
          await c.connect();
          await c.subscribe('chat:js-stall', {{handler: record}});
          return true;
        }})()""",
    )
    proxy.stall()
    for i in range(3):
        await asyncio.to_thread(kizuna.api, "publish", channel="chat:js-stall", data=i)
    await browser.wait("page", "t.data.length >= 3")
    drop = next(s for s in await states(browser) if s["state"] == "disconnected")
    assert (drop["code"], drop["reason"], drop["reconnect"]) == (1011, "ping timeout", True)
    assert await browser.eval("page", "t.data") == [0, 1, 2]
    again = await browser.eval("page", "t.events.filter(e => e.resubscribed)")
    assert again and all(e["recovered"] and not e["gap"] for e in again)
    assert sum(e["missed"] for e in again) == 3


async def test_a_terminal_code_stops_reconnecting(
    browser: Browser, kizuna: KizunaProcess, proxy: TcpProxy
) -> None:
    await load(browser, f"http://127.0.0.1:{proxy.port}")
    await browser.eval(
        "page",
        f"""(async () => {{
          const c = window.client = new k.Client(location.origin, {{
            token: {json.dumps(token("mallory"))}, {FAST}}});
          track(c);
          await c.connect();
          const sub = await c.subscribe('chat:js-kick');
          window.t.iteration = (async () => {{
            try {{ for await (const e of sub) {{}} return 'ended'; }}
            catch (error) {{ return `${{error.name}} ${{error.message}}`; }}
          }})();
          return true;
        }})()""",
    )
    accepted = proxy.accepted
    response = await asyncio.to_thread(kizuna.api, "disconnect", user="mallory")
    assert response.json() == {"result": {"disconnected": 1}}
    await browser.wait("page", "t.states.some(s => s.state === 'disconnected')")
    assert await browser.eval("page", "t.iteration") == "Disconnected 4003 forbidden"
    await asyncio.sleep(0.6)  # twice the longest backoff: a retry would have come by now
    assert proxy.accepted == accepted
    last = (await states(browser))[-1]
    assert (last["state"], last["code"], last["reconnect"]) == ("disconnected", 4003, False)
    refused = await browser.eval(
        "page", "client.publish('chat:js-kick', 1).then(() => 'sent', (e) => e.name)"
    )
    assert refused == "Disconnected"


async def test_tokens_are_replaced_and_refreshed(browser: Browser, kizuna: KizunaProcess) -> None:
    await load(browser, kizuna.url)
    result = await browser.eval(
        "page",
        f"""(async () => {{
          let calls = 0;
          const fresh = {json.dumps(token("ann", ttl=3600))};
          const expired = new k.Client(location.origin, {{token: {json.dumps(token("ann", ttl=-5))},
            getToken: async () => {{ calls += 1; return fresh; }}, {FAST}}});
          track(expired);
          await expired.connect();
          const afterExpired = calls;
          // A 3-second token with a callback: refreshed on the open connection. Not
          // shorter: the connects above can take a second on a loaded machine.
          const shortToken = {json.dumps(token("ann", ttl=3))};
          const expiresAt = JSON.parse(atob(shortToken.split('.')[1].replace(/-/g, '+')
            .replace(/_/g, '/'))).exp * 1000;
          const short = new k.Client(location.origin, {{token: shortToken,
            getToken: async () => {{ calls += 1; return fresh; }}, {FAST}}});
          const shortStates = [];
          short.on('state', (s) => shortStates.push(s.state));
          await short.connect();
          await new Promise((r) => setTimeout(r, expiresAt - Date.now() + 500));
          await short.publish('chat:js-token', 'still here');
          await expired.close(); await short.close();
          return {{afterExpired, calls, shortStates}};
        }})()""",
    )
    assert result["afterExpired"] == 1
    assert result["calls"] == 2
    assert result["shortStates"] == ["connecting", "connected", "disconnected"]  # closed by us
    first = await states(browser)
    assert [(s["state"], s["code"], s["delay"]) for s in first[:4]] == [
        ("connecting", None, None),
        ("disconnected", 3006, 0),
        ("connecting", None, None),
        ("connected", None, None),
    ]


async def test_an_invalid_token_without_a_callback_is_final(
    browser: Browser, kizuna: KizunaProcess
) -> None:
    await load(browser, kizuna.url)
    outcome = await browser.eval(
        "page",
        f"""new k.Client(location.origin, {{token: 'not-a-jwt', {FAST}}}).connect()
             .then(() => 'connected', (e) => `${{e.name}} ${{e.code}}`)""",
    )
    assert outcome == "Disconnected 4002"


async def test_backoff_delays_stay_within_bounds(browser: Browser, kizuna: KizunaProcess) -> None:
    await load(browser, kizuna.url)
    dead = f"http://127.0.0.1:{free_port()}"
    outcome = await browser.eval(
        "page",
        f"""(async () => {{
          const c = new k.Client({json.dumps(dead)}, {{token: 't',
            backoff: {{minDelay: 50, maxDelay: 200, maxAttempts: 6}}}});
          track(c);
          return c.connect().then(() => 'connected', (e) => e.message);
        }})()""",
    )
    assert "gave up after 6 attempts" in outcome
    changes = await states(browser)
    retries = [s for s in changes if s["state"] == "disconnected" and s["reconnect"]]
    connecting = [s for s in changes if s["state"] == "connecting"]
    assert [s["attempt"] for s in connecting] == [0, 1, 2, 3, 4, 5]
    assert len(retries) == 5
    for n, change in enumerate(retries):
        delay = change["delay"]
        assert isinstance(delay, float | int)
        assert 50 <= delay <= min(200, 50 * 2**n), (n, delay)
    for change, nxt in zip(retries, connecting[1:], strict=True):
        waited = float(nxt["at"]) - float(change["at"])  # type: ignore[arg-type]
        delay = float(change["delay"])  # type: ignore[arg-type]
        assert delay - 5 <= waited <= delay + 1000  # slack for a loaded CI


def garbage_then_behave(frame: str) -> object:
    async def script(conn: ServerConnection, n: int) -> None:
        if n > 1:
            await behave(conn)
            return
        await answer_connect(conn)
        await receive_command(conn)  # the subscribe
        await conn.send(frame)
        await conn.wait_closed()

    return script


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("<html>502 Bad Gateway</html>", 'not JSON: "<html>502 Bad Gateway</html>"'),
        ('{"push": "pub", "channel": "chat:x", "data": 1, "offset": 3}', "must carry its epoch"),
        ('{"id": 2, "result": {"recoverable": true, "offset": "x"}}', "offset must be"),
    ],
)
async def test_malformed_frames_are_refused_and_the_client_reconnects(
    browser: Browser, kizuna: KizunaProcess, frame: str, expected: str
) -> None:
    await load(browser, kizuna.url)
    async with FakeServer(garbage_then_behave(frame)) as fake:
        await browser.eval(
            "page",
            f"""(async () => {{
              const c = window.client = new k.Client('http://127.0.0.1:{fake.port}',
                {{token: 't', {FAST}}});
              track(c);
              await c.connect();
              c.subscribe('chat:x', {{handler: record}}).catch(() => {{}});
              return true;
            }})()""",
        )
        await browser.wait("page", "t.states.filter(s => s.state === 'connected').length >= 2")
        drop = next(s for s in await states(browser) if s["state"] == "disconnected")
        assert drop["code"] == 1002 and drop["reconnect"] is True
        assert str(drop["reason"]).startswith("malformed frame from the server: ")
        assert expected in str(drop["reason"])
        assert await browser.eval("page", "client.ping().then((ms) => ms >= 0)")
        await browser.eval("page", "client.close().then(() => true)")
        assert fake.connections == 2
    warnings = [line for line in await browser.log("page") if "malformed frame" in line]
    assert warnings


async def test_a_hole_in_the_live_stream_is_recovered(
    browser: Browser, kizuna: KizunaProcess
) -> None:
    await load(browser, kizuna.url)
    sent: list[dict[str, object]] = []
    async with FakeServer(hole_then_replay(sent)) as fake:
        await browser.eval(
            "page",
            f"""(async () => {{
              const c = window.client = new k.Client('http://127.0.0.1:{fake.port}',
                {{token: 't', {FAST}}});
              await c.connect();
              await c.subscribe('chat:hole', {{handler: record}});
              return true;
            }})()""",
        )
        await browser.wait("page", "t.data.length >= 6")
        events = await browser.eval(
            "page", "t.events.map(e => e.type === 'publication' ? e.data : e.type)"
        )
        assert events == ["subscribed", 2, "subscribed", 3, 4, 5, 6, 7]
        assert [c["method"] for c in sent] == ["subscribe", "unsubscribe", "subscribe"]
        assert sent[2]["params"] == {"channel": "chat:hole", "since": {"offset": 2, "epoch": "e"}}
        await browser.eval("page", "client.close().then(() => true)")
