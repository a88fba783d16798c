"""Long-polling and polling against a real server: cursors, waiting, gaps, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from kizuna.core.auth import mint_token
from tests.support.processes import JWT_SECRET, KizunaProcess

TOKEN = mint_token(JWT_SECRET, "poller")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KizunaProcess]:
    cfg = tmp_path_factory.mktemp("lp") / "k.toml"
    cfg.write_text(
        "[namespaces.chat]\n"
        "[namespaces.tiny]\nhistory_size = 2\n"
        "[namespaces.live]\nhistory_size = 0\n"
    )
    with KizunaProcess(args=["--config", str(cfg)]) as k:
        yield k


@pytest.fixture
async def http(server: KizunaProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, headers=AUTH) as client:
        yield client


async def poll(
    http: httpx.AsyncClient, channels: str, cursor: str = "", timeout: float = 0
) -> dict:
    r = await http.get(
        "/connection/poll", params={"channels": channels, "cursor": cursor, "timeout": timeout}
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    out: dict = r.json()
    return out


async def publish(http: httpx.AsyncClient, channel: str, data: object) -> None:
    r = await http.post("/connection/publish", json={"channel": channel, "data": data})
    assert r.status_code == 200, r.text


async def test_plain_polling_returns_what_follows_the_cursor(http: httpx.AsyncClient) -> None:
    first = await poll(http, "chat:p1,chat:p2")
    assert first["publications"] == []
    await publish(http, "chat:p1", 1)
    await publish(http, "chat:p2", 2)
    await publish(http, "chat:p1", 3)
    second = await poll(http, "chat:p1,chat:p2", first["cursor"])
    got = [(p["channel"], p["data"], p["offset"]) for p in second["publications"]]
    assert got == [("chat:p1", 1, 1), ("chat:p1", 3, 2), ("chat:p2", 2, 1)]
    third = await poll(http, "chat:p1,chat:p2", second["cursor"])
    assert third["publications"] == []
    assert third["cursor"] == second["cursor"]


async def test_long_poll_waits_and_wakes_on_publish(http: httpx.AsyncClient) -> None:
    start = await poll(http, "chat:w")

    async def later() -> None:
        await asyncio.sleep(0.3)
        await publish(http, "chat:w", "hello")

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    answer = await poll(http, "chat:w", start["cursor"], timeout=10)
    elapsed = time.monotonic() - t0
    await task
    assert [p["data"] for p in answer["publications"]] == ["hello"]
    assert 0.2 < elapsed < 5


async def test_long_poll_times_out_empty(http: httpx.AsyncClient) -> None:
    start = await poll(http, "chat:t")
    t0 = time.monotonic()
    answer = await poll(http, "chat:t", start["cursor"], timeout=0.5)
    assert answer["publications"] == []
    assert time.monotonic() - t0 >= 0.45


async def test_cursor_works_across_requests_without_state(http: httpx.AsyncClient) -> None:
    """A client that drops and comes back with its cursor receives exactly what it missed."""
    cursor = (await poll(http, "chat:m"))["cursor"]
    received: list[int] = []
    for batch in ([0, 1], [2], [3, 4, 5]):
        for i in batch:
            await publish(http, "chat:m", i)
        answer = await poll(http, "chat:m", cursor, timeout=1)
        received += [p["data"] for p in answer["publications"]]
        cursor = answer["cursor"]
    assert received == [0, 1, 2, 3, 4, 5]


async def test_gap_when_history_no_longer_reaches_the_cursor(http: httpx.AsyncClient) -> None:
    cursor = (await poll(http, "tiny:g"))["cursor"]
    for i in range(5):
        await publish(http, "tiny:g", i)
    answer = await poll(http, "tiny:g", cursor)
    assert answer["gaps"] == ["tiny:g"]
    assert answer["publications"] == []
    await publish(http, "tiny:g", 5)
    after = await poll(http, "tiny:g", answer["cursor"])
    assert [p["data"] for p in after["publications"]] == [5]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"channels": ""}, 400, 107),
        ({"channels": "chat:a", "timeout": "soon"}, 400, 107),
        ({"channels": "chat:a", "timeout": "61"}, 400, 107),
        ({"channels": "chat:a", "timeout": "-1"}, 400, 107),
        ({"channels": "chat:a", "cursor": "!!"}, 400, 107),
        ({"channels": "chat:a", "cursor": "W1sxLDIsM11d"}, 400, 107),
        ({"channels": "nope:a"}, 404, 102),
        ({"channels": "live:a"}, 503, 108),
        ({"channels": "x" * 300}, 400, 107),
    ],
)
async def test_bad_requests(http: httpx.AsyncClient, params: dict, status: int, code: int) -> None:
    r = await http.get("/connection/poll", params=params)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_tokens_and_origins(server: KizunaProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as anon:
        r = await anon.get("/connection/poll", params={"channels": "chat:a", "timeout": 0})
        assert (r.status_code, r.json()["error"]["code"]) == (401, 101)
        expired = mint_token(JWT_SECRET, "x", ttl=-10)
        r = await anon.get(
            "/connection/poll", params={"channels": "chat:a", "token": expired, "timeout": 0}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (401, 109)
        r = await anon.get(
            "/connection/poll",
            params={"channels": "chat:a", "token": TOKEN, "timeout": 0},
            headers={"Origin": "http://evil.example"},
        )
        assert (r.status_code, r.json()["error"]["code"]) == (403, 103)


async def test_other_pollers_unaffected_by_bad_requests(http: httpx.AsyncClient) -> None:
    start = await poll(http, "chat:iso")
    waiting = asyncio.create_task(poll(http, "chat:iso", start["cursor"], timeout=5))
    for _ in range(20):
        r = await http.get("/connection/poll", params={"channels": "chat:iso", "cursor": "%%"})
        assert r.status_code == 400
    await publish(http, "chat:iso", "still here")
    answer = await waiting
    assert [p["data"] for p in answer["publications"]] == ["still here"]
