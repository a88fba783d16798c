"""The demo chat in a real chromium: two pages chatting, a lost connection, a restart, escaping."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from urllib.parse import quote

from tests.browser.conftest import Browser
from tests.client.conftest import SERVER_ARGS
from tests.client.support import token
from tests.client.tcp_proxy import TcpProxy
from tests.support.processes import KizunaProcess, RedisProcess

MESSAGES = "[...document.querySelectorAll('#messages li.message .text')].map(e => e.textContent)"
STATUS = "document.getElementById('status')"
RECOVERY = "document.getElementById('recovery')"


def chat_url(base: str, user: str, name: str, room: str = "lobby") -> str:
    return f"{base}/?token={token(user)}&name={quote(name)}&room={quote(room)}"


async def joined(browser: Browser, page: str) -> None:
    """Connected, and the page's own hello is on screen (so its subscription is live)."""
    await browser.wait(page, f"{STATUS}.dataset.state === 'connected'")
    await browser.wait(page, "document.querySelector('#messages li.event') !== null")


async def say(browser: Browser, page: str, text: str) -> None:
    await browser.call("fill", page=page, selector="#text", value=text)
    await browser.call("press", page=page, selector="#text", key="Enter")


async def messages(browser: Browser, page: str, count: int) -> list[str]:
    """The page's messages, once there are at least ``count`` of them."""
    await browser.wait(page, f"{MESSAGES}.length >= {count}")
    value = await browser.eval(page, MESSAGES)
    return list(value)


async def test_two_pages_chat_in_one_room(
    browser: Browser, kizuna: KizunaProcess, artifacts: Path
) -> None:
    await browser.open("ann", chat_url(kizuna.url, "ann", "Ann"))
    await joined(browser, "ann")
    await browser.open("bob", chat_url(kizuna.url, "bob", "Bob"))
    await joined(browser, "bob")

    await say(browser, "ann", "hi Bob")
    await say(browser, "bob", "hi Ann!")
    assert await messages(browser, "bob", 2) == ["hi Bob", "hi Ann!"]
    assert await messages(browser, "ann", 2) == ["hi Bob", "hi Ann!"]

    # Presence: each page lists both, by the names they chose.
    await browser.wait("ann", "document.querySelectorAll('#presence li').length === 2")
    presence = await browser.eval(
        "ann", "[...document.querySelectorAll('#presence li')].map(e => e.firstChild.textContent)"
    )
    assert sorted(presence) == ["Ann", "Bob"]
    await browser.wait("ann", "document.getElementById('presence').textContent.includes('Bob')")

    # A late joiner gets the history first, then live messages, nothing twice.
    await browser.open("cy", chat_url(kizuna.url, "cy", "Cy"))
    await joined(browser, "cy")
    assert await messages(browser, "cy", 2) == ["hi Bob", "hi Ann!"]
    await say(browser, "ann", "welcome Cy")
    assert await messages(browser, "cy", 3) == ["hi Bob", "hi Ann!", "welcome Cy"]
    events = await browser.eval(
        "cy", "[...document.querySelectorAll('#messages li.event')].map(e => e.textContent)"
    )
    assert events == ["Ann joined", "Bob joined", "Cy joined"]

    await messages(browser, "ann", 3)
    await browser.wait("ann", "document.querySelectorAll('#presence li').length === 3")
    size = await browser.call("screenshot", page="ann", path=str(artifacts / "chat.png"))
    assert size > 10_000
    for page in ("ann", "bob", "cy"):
        assert not [line for line in await browser.log(page) if "error" in line]


async def test_a_page_that_loses_its_connection_gets_every_missed_message(
    browser: Browser, kizuna: KizunaProcess, proxy: TcpProxy, artifacts: Path
) -> None:
    """Ann's page is served through a proxy; its WebSocket is cut and refused for a while."""
    await browser.open("ann", chat_url(f"http://127.0.0.1:{proxy.port}", "ann", "Ann", "cut"))
    await joined(browser, "ann")
    await browser.open("bob", chat_url(kizuna.url, "bob", "Bob", "cut"))
    await joined(browser, "bob")
    await say(browser, "bob", "before")
    assert await messages(browser, "ann", 1) == ["before"]

    proxy.refusing = True
    proxy.cut()
    countdown = await browser.wait(
        "ann", f"{STATUS}.dataset.state === 'reconnecting' && {STATUS}.textContent"
    )
    assert countdown.startswith("reconnecting in ")
    await browser.call("screenshot", page="ann", path=str(artifacts / "chat-reconnecting.png"))
    missed = [f"missed {i}" for i in range(5)]
    for text in missed:
        await say(browser, "bob", text)
    assert await messages(browser, "bob", 6) == ["before", *missed]
    proxy.refusing = False

    await browser.wait("ann", f"{RECOVERY}.dataset.recovery === 'recovered'")
    assert await browser.text("ann", "#recovery") == "recovered 5 missed messages"
    assert await messages(browser, "ann", 6) == ["before", *missed]  # each once, in order
    await say(browser, "bob", "after")
    assert await messages(browser, "ann", 7) == ["before", *missed, "after"]
    assert await browser.text("ann", "#status") == "connected"


async def test_a_server_restart_shows_a_gap_and_reloads_history(
    browser: Browser, kizuna: KizunaProcess, artifacts: Path
) -> None:
    """The memory broker loses history on restart: the page must say so, not hide it."""
    await browser.open("ann", chat_url(kizuna.url, "ann", "Ann", "restart"))
    await joined(browser, "ann")
    await say(browser, "ann", "before the restart")
    await messages(browser, "ann", 1)

    await asyncio.to_thread(kizuna.stop)
    await browser.wait("ann", f"{STATUS}.dataset.state !== 'connected'")
    await asyncio.to_thread(kizuna.start)
    response = await asyncio.to_thread(
        kizuna.api,
        "publish",
        channel="chat:restart",
        data={"kind": "msg", "name": "Ops", "text": "published right after the restart"},
    )
    assert response.status_code == 200

    await browser.wait("ann", f"{RECOVERY}.dataset.recovery === 'gap'", timeout=15)
    await browser.wait("ann", f"{STATUS}.dataset.state === 'connected'")
    divider = await browser.text("ann", "#messages li.divider")
    assert "gap" in divider
    # The reload brought back what the new history holds.
    texts = await messages(browser, "ann", 2)
    assert texts == ["before the restart", "published right after the restart"]
    await say(browser, "ann", "after the restart")
    assert (await messages(browser, "ann", 3))[-1] == "after the restart"
    await browser.call("screenshot", page="ann", path=str(artifacts / "chat-gap.png"))


async def test_user_supplied_strings_are_shown_as_text(
    browser: Browser, kizuna: KizunaProcess
) -> None:
    name = '<b id="injected-name">Eve</b>'
    room = "<i>room</i>"
    text = '<img src=x onerror="window.__owned = 1"><script>window.__owned = 2</script>&amp;'
    await browser.open("eve", chat_url(kizuna.url, "<u>eve</u>", name, room))
    await joined(browser, "eve")
    await say(browser, "eve", text)
    assert await messages(browser, "eve", 1) == [text]
    # A publication that is not a chat message at all is shown as JSON text.
    odd = {"kind": "msg", "name": 5, "text": "<svg onload=alert(1)>"}
    await asyncio.to_thread(kizuna.api, "publish", channel="chat:" + room, data=odd)
    assert (await messages(browser, "eve", 2))[1] == json.dumps(odd, separators=(",", ":"))

    injected = await browser.eval(
        "eve",
        "document.querySelectorAll('#messages b, #messages img, #messages script, #messages svg,"
        " #presence b, #presence u, #room-title i').length",
    )
    assert injected == 0
    assert await browser.eval("eve", "window.__owned === undefined")
    assert await browser.text("eve", "#room-title") == f"# {room}"
    assert await browser.text("eve", "#messages li.event") == f"{name} joined"
    presence = await browser.text("eve", "#presence li")
    assert presence == f"{name}(<u>eve</u>)"
    assert not [line for line in await browser.log("eve") if line.startswith("dialog")]


async def test_the_demo_fails_over_between_nodes(
    browser: Browser, redis_server: RedisProcess
) -> None:
    """Two nodes on one Redis; Ann's page knows both; her node stops; she misses nothing."""
    a = KizunaProcess(args=[*SERVER_ARGS, "--broker", redis_server.url])
    b = KizunaProcess(args=[*SERVER_ARGS, "--broker", redis_server.url, "--allowed-origins", a.url])
    room = f"failover-{uuid.uuid4().hex[:6]}"
    with a, b:
        nodes = f"{a.url},{b.url}"
        await browser.open("ann", chat_url(a.url, "ann", "Ann", room) + f"&nodes={nodes}")
        await joined(browser, "ann")
        await browser.open("bob", chat_url(b.url, "bob", "Bob", room))
        await joined(browser, "bob")
        await say(browser, "bob", "across nodes")
        assert await messages(browser, "ann", 1) == ["across nodes"]

        # a drains: it advises a reconnect delay of up to 1 s, so Ann may be back on b
        # before a test could catch her in between; what matters is that she loses nothing.
        await asyncio.to_thread(a.stop)
        for text in ("while", "ann", "moves"):
            await say(browser, "bob", text)
        on_b = f"{STATUS}.title.startsWith({json.dumps(b.url)})"
        await browser.wait("ann", f"{STATUS}.dataset.state === 'connected' && {on_b}")
        assert await messages(browser, "ann", 4) == ["across nodes", "while", "ann", "moves"]
        await say(browser, "ann", "hello from node b")
        assert (await messages(browser, "bob", 5))[-1] == "hello from node b"
