"""SSE against a real server: incremental reads, resume by Last-Event-ID, gaps, errors."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from kizuna.core.auth import mint_token
from tests.support.processes import JWT_SECRET, KizunaProcess
from tests.transports.sse_reader import collect, events

NODE_DIR = Path(__file__).parents[1] / "node" / "eventsource"


def token(user: str = "reader", **kw: object) -> str:
    return mint_token(JWT_SECRET, user, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KizunaProcess]:
    cfg = tmp_path_factory.mktemp("sse") / "k.toml"
    cfg.write_text(
        "[namespaces.chat]\n"
        "[namespaces.tiny]\nhistory_size = 2\njoin_leave = false\n"
        "[namespaces.live]\nhistory_size = 0\njoin_leave = false\npresence = false\n"
    )
    with KizunaProcess(args=["--config", str(cfg), "--ping-interval", "0.5"]) as k:
        yield k


@pytest.fixture
async def http(server: KizunaProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def publish(http: httpx.AsyncClient, channel: str, data: object) -> dict[str, object]:
    r = await http.post(
        "/connection/publish",
        json={"channel": channel, "data": data},
        headers={"Authorization": f"Bearer {token('writer')}"},
    )
    assert r.status_code == 200, r.text
    result: dict[str, object] = r.json()["result"]
    return result


async def test_stream_headers_and_incremental_events(http: httpx.AsyncClient) -> None:
    url = f"/connection/sse?channels=chat:s1,tiny:s1&token={token()}"
    async with http.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        assert response.headers["x-accel-buffering"] == "no"
        stream = events(response)
        [hello] = await collect(stream, {"connected"}, 1)
        assert hello.data["client"]
        for i in range(3):
            await publish(http, "chat:s1", {"i": i})
            [event] = await collect(stream, {"pub"}, 1)  # each arrives before the next is sent
            assert event.data["data"] == {"i": i}
            assert event.data["channel"] == "chat:s1"
            assert event.id
        [beat] = await collect(stream, {":"}, 1, timeout=3)
        assert beat.data == "ping"


async def test_resume_with_last_event_id_gets_exactly_the_missed(http: httpx.AsyncClient) -> None:
    url = f"/connection/sse?channels=chat:r1,chat:r2&token={token()}"
    async with http.stream("GET", url) as response:
        stream = events(response)
        await collect(stream, {"connected"}, 1)
        await publish(http, "chat:r1", "a1")
        await publish(http, "chat:r2", "b1")
        seen = await collect(stream, {"pub"}, 2)
    last_id = seen[-1].id
    assert last_id is not None
    for data in ("a2", "b2", "a3"):
        await publish(http, "chat:r1" if data[0] == "a" else "chat:r2", data)
    async with http.stream("GET", url, headers={"Last-Event-ID": last_id}) as response:
        stream = events(response)
        resumed = await collect(stream, {"pub", "gap"}, 3)
        assert [e.data["data"] for e in resumed] == ["a2", "b2", "a3"] or [
            e.data["data"] for e in resumed
        ] == ["a2", "a3", "b2"]
        await publish(http, "chat:r2", "b3")
        [live] = await collect(stream, {"pub", "gap"}, 1)
        assert live.data["data"] == "b3"


async def test_resume_beyond_history_says_gap(http: httpx.AsyncClient) -> None:
    url = f"/connection/sse?channels=tiny:g&token={token()}"
    async with http.stream("GET", url) as response:
        stream = events(response)
        await collect(stream, {"connected"}, 1)
        await publish(http, "tiny:g", 0)
        [first] = await collect(stream, {"pub"}, 1)
    for i in range(1, 5):  # history_size 2: offsets 2 and 3 fall out
        await publish(http, "tiny:g", i)
    assert first.id is not None
    async with http.stream("GET", url, headers={"Last-Event-ID": first.id}) as response:
        stream = events(response)
        [gap] = await collect(stream, {"pub", "gap"}, 1)
        assert gap.event == "gap"
        assert gap.data["channel"] == "tiny:g"
        assert gap.data["offset"] == 5
        await publish(http, "tiny:g", 5)
        [after] = await collect(stream, {"pub"}, 1)
        assert after.data["data"] == 5


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("channels=chat:x", {}, 401, 101),
        ("channels=chat:x&token=bad", {}, 401, 101),
        ("channels=", {}, 400, 107),
        ("channels=nope:x&token={t}", {}, 404, 102),
        ("channels=chat:x&cursor=%%%&token={t}", {}, 400, 107),
        ("channels=chat:x&token={t}", {"Last-Event-ID": "bm90LWpzb24"}, 400, 107),
        ("channels=chat:x&token={t}", {"Origin": "http://evil.example"}, 403, 103),
    ],
)
async def test_refusals_are_json_errors_before_the_stream(
    http: httpx.AsyncClient, query: str, headers: dict[str, str], status: int, code: int
) -> None:
    r = await http.get("/connection/sse?" + query.format(t=token()), headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_token_claim_limits_channels(http: httpx.AsyncClient) -> None:
    limited = token(channels=["chat:mine"])
    r = await http.get(f"/connection/sse?channels=chat:other&token={limited}")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == 103


async def test_token_from_cookie(http: httpx.AsyncClient) -> None:
    async with http.stream(
        "GET", "/connection/sse?channels=chat:c", headers={"Cookie": f"kizuna_token={token()}"}
    ) as response:
        assert response.status_code == 200
        await collect(events(response), {"connected"}, 1)


async def test_http_publish_errors(http: httpx.AsyncClient, server: KizunaProcess) -> None:
    auth = {"Authorization": f"Bearer {token()}"}
    cases = [
        ({}, b'{"channel":"chat:x","data":1}', 401, 101),
        (auth, b"not json", 400, 107),
        (auth, b"[1]", 400, 107),
        (auth, b'{"channel":"chat:x"}', 400, 107),
        (auth, b'{"channel":"nope:x","data":1}', 404, 102),
        (auth, orjson.dumps({"channel": "chat:x", "data": "x" * 70000}), 413, 114),
    ]
    for headers, body, status, code in cases:
        r = await http.post("/connection/publish", content=body, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), body[:40]


async def test_node_eventsource_client_reads_and_sees_every_publication(
    http: httpx.AsyncClient, server: KizunaProcess
) -> None:
    if not (NODE_DIR / "node_modules" / "eventsource").exists():
        pytest.fail(
            f"npm packages missing: run `npm ci --prefix {NODE_DIR.relative_to(Path.cwd())}`"
        )
    url = f"{server.url}/connection/sse?channels=chat:node&token={token()}"
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "sse_client.mjs"),
        url,
        "5",
        "10000",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    while True:  # wait until it is subscribed (its own join) before publishing
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        if b'"join"' in line:
            break
    for i in range(5):
        await publish(http, "chat:node", {"n": i})
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    pubs = [orjson.loads(x) for x in out.splitlines() if b'"pub"' in x]
    assert [p["data"]["data"]["n"] for p in pubs] == [0, 1, 2, 3, 4]
    assert all(p["id"] for p in pubs)


def test_cors_lets_an_allowed_origin_use_the_http_transports(tmp_path: Path) -> None:
    allowed = "http://app.example"
    with KizunaProcess(args=["--allowed-origins", allowed]) as server:
        preflight = {
            "Origin": allowed,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,last-event-id",
        }
        for path in ("/connection/sse", "/connection/poll", "/connection/publish"):
            r = httpx.options(server.url + path, headers=preflight)
            assert r.status_code == 200, path
            assert r.headers["access-control-allow-origin"] == allowed
            assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = httpx.get(
            server.url + "/connection/poll",
            params={"channels": "chat:cors", "timeout": 0, "token": token()},
            headers={"Origin": allowed},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == allowed
        sse = f"{server.url}/connection/sse?channels=chat:cors&token={token()}"
        with httpx.stream("GET", sse, headers={"Origin": allowed}) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == allowed
            assert next(stream.iter_lines()) == "event: connected"
        assert httpx.post(sse, headers={"Origin": allowed}).status_code == 405
        foreign = httpx.options(
            server.url + "/connection/poll", headers={**preflight, "Origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in foreign.headers
