"""The server HTTP API end to end: what a backend does, seen by real WebSocket subscribers.

Every answer is checked for both halves of the contract: the HTTP status and
the numbered code in ``{"error": {"code": N}}`` (or the ``result`` shape).
"""

from __future__ import annotations

import httpx
import pytest

from kizuna.protocol.codes import DisconnectCode, ErrorCode
from tests.e2e.clients import Api, token
from tests.e2e.conftest import MAX_MESSAGE_SIZE, OpenNode, OpenPy
from tests.support.processes import API_KEY, KizunaProcess


def error_of(response: httpx.Response) -> int:
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str)
    code: int = body["error"]["code"]
    return code


@pytest.mark.node
async def test_publish_reaches_python_and_node_subscribers(
    server: KizunaProcess, api: Api, open_py: OpenPy, open_node: OpenNode, uid: str
):
    channel = f"chat:api-{uid}"
    py = await open_py(server.ws_url)
    node = await open_node(server.ws_url)
    for i, client in enumerate((py, node)):
        await client.connect(token(f"sub{i}-{uid}"))
        await client.call("subscribe", channel=channel)
    response = await api.post("publish", {"channel": channel, "data": {"text": "hello"}})
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["offset"] == 1
    assert isinstance(result["epoch"], str)
    for client in (py, node):
        pubs = await client.publications(channel)
        assert len(pubs) == 1
        assert pubs[0]["data"] == {"text": "hello"}
        assert (pubs[0]["offset"], pubs[0]["epoch"]) == (1, result["epoch"])
        assert "info" not in pubs[0]  # the server published, not a client


async def test_publish_to_server_only_namespace(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channel = f"notifications:{uid}"
    client = await open_py(server.ws_url)
    await client.connect(token(f"n-{uid}"))
    await client.call("subscribe", channel=channel)
    assert await client.error_code("publish", channel=channel, data=1) == (
        ErrorCode.PERMISSION_DENIED
    )
    assert (await api.post("publish", {"channel": channel, "data": 2})).status_code == 200
    assert [p["data"] for p in await client.publications(channel)] == [2]


async def test_broadcast_reaches_every_channel(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channels = [f"chat:bc1-{uid}", f"chat:bc2-{uid}"]
    clients = []
    for channel in channels:
        client = await open_py(server.ws_url)
        await client.connect(token(f"b-{uid}"))
        await client.call("subscribe", channel=channel)
        clients.append(client)
    response = await api.post("broadcast", {"channels": channels, "data": {"all": True}})
    assert response.status_code == 200
    responses = response.json()["result"]["responses"]
    assert [r["offset"] for r in responses] == [1, 1]
    for client, channel in zip(clients, channels, strict=True):
        assert [p["data"] for p in await client.publications(channel)] == [{"all": True}]


async def test_broadcast_with_an_unknown_channel_publishes_nothing(api: Api, uid: str):
    good = f"chat:bcx-{uid}"
    response = await api.post("broadcast", {"channels": [good, f"nowhere:{uid}"], "data": 1})
    assert response.status_code == 404
    assert error_of(response) == ErrorCode.UNKNOWN_CHANNEL
    history = (await api.post("history", {"channel": good})).json()["result"]
    assert history["publications"] == []


async def test_history(api: Api, uid: str):
    channel = f"chat:apih-{uid}"
    for n in range(1, 5):
        await api.post("publish", {"channel": channel, "data": n})
    result = (await api.post("history", {"channel": channel, "limit": 2, "reverse": True})).json()
    assert [p["data"] for p in result["result"]["publications"]] == [4, 3]
    epoch = result["result"]["epoch"]
    since = await api.post("history", {"channel": channel, "since": {"offset": 2, "epoch": epoch}})
    assert [p["offset"] for p in since.json()["result"]["publications"]] == [3, 4]
    bad = await api.post("history", {"channel": channel, "limit": "two"})
    assert bad.status_code == 400
    assert error_of(bad) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "since",
    [{"offset": True, "epoch": "e"}, {"offset": -1, "epoch": "e"}, {"offset": 1}],
    ids=["offset-bool", "offset-negative", "no-epoch"],
)
async def test_history_with_an_invalid_since_is_400_107(
    api: Api, uid: str, since: dict[str, object]
):
    """The same validation as the WebSocket ``history`` command (107 for a bad position)."""
    response = await api.post("history", {"channel": f"chat:since-{uid}", "since": since})
    assert response.status_code == 400, response.text
    assert error_of(response) == ErrorCode.BAD_REQUEST


async def test_presence_presence_stats_and_channels(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    channel = f"chat:apip-{uid}"
    ids = []
    for user in ("p1", "p2", "p1"):
        client = await open_py(server.ws_url)
        ids.append((await client.connect(token(f"{user}-{uid}")))["client"])
        await client.call("subscribe", channel=channel)
    presence = (await api.post("presence", {"channel": channel})).json()["result"]
    assert set(presence["clients"]) == set(ids)
    assert presence["clients"][ids[1]] == {"user": f"p2-{uid}", "client": ids[1]}
    stats = (await api.post("presence_stats", {"channel": channel})).json()["result"]
    assert stats == {"num_clients": 3, "num_users": 2}
    channels = (await api.post("channels", {})).json()["result"]["channels"]
    assert channels[channel] == {"num_clients": 3}


async def test_disconnect_closes_the_users_connections_with_4003(
    server: KizunaProcess, api: Api, open_py: OpenPy, uid: str
):
    target, bystander = f"target-{uid}", f"bystander-{uid}"
    victims = []
    for _ in range(2):
        client = await open_py(server.ws_url)
        await client.connect(token(target))
        victims.append(client)
    other = await open_py(server.ws_url)
    await other.connect(token(bystander))
    response = await api.post("disconnect", {"user": target})
    assert response.status_code == 200
    assert response.json()["result"] == {"disconnected": 2}
    for victim in victims:
        assert (await victim.expect_close()).code == DisconnectCode.FORBIDDEN
    assert await other.call("ping") == {}
    assert (await api.post("disconnect", {"user": target})).json()["result"] == {"disconnected": 0}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "apikey wrong"}, {"Authorization": f"Bearer {API_KEY}"}],
    ids=["missing", "wrong", "wrong-scheme"],
)
async def test_wrong_or_missing_api_key_is_401(api: Api, headers: dict[str, str]):
    response = await api.post("channels", {}, headers=headers)
    assert response.status_code == 401
    assert error_of(response) == ErrorCode.UNAUTHORIZED


async def test_api_key_in_x_api_key_header(api: Api):
    response = await api.post("channels", {}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    assert "channels" in response.json()["result"]


async def test_unknown_method_is_404(api: Api):
    response = await api.post("frobnicate", {})
    assert response.status_code == 404
    assert error_of(response) == ErrorCode.METHOD_NOT_FOUND


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]"], ids=["not-json", "not-object"])
async def test_non_json_body_is_400_107(api: Api, content: bytes):
    response = await api.post("publish", content=content)
    assert response.status_code == 400
    assert error_of(response) == ErrorCode.BAD_REQUEST


async def test_missing_fields_are_400_107(api: Api, uid: str):
    for method, body in [
        ("publish", {"data": 1}),
        ("publish", {"channel": f"chat:{uid}"}),
        ("broadcast", {"channels": [], "data": 1}),
        ("disconnect", {}),
    ]:
        response = await api.post(method, body)
        assert response.status_code == 400, (method, body)
        assert error_of(response) == ErrorCode.BAD_REQUEST


async def test_oversize_body_is_413(api: Api, uid: str):
    body = {"channel": f"chat:big-{uid}", "data": "x" * MAX_MESSAGE_SIZE}
    response = await api.post("publish", body)
    assert response.status_code == 413
    assert error_of(response) == ErrorCode.MESSAGE_TOO_LARGE
    history = await api.result("history", channel=f"chat:big-{uid}")
    assert history["publications"] == []


@pytest.mark.parametrize(
    "method", ["publish", "history", "presence", "presence_stats"], ids=lambda m: m
)
async def test_unknown_channel_is_404_102(api: Api, uid: str, method: str):
    response = await api.post(method, {"channel": f"nowhere:{uid}", "data": 1})
    assert response.status_code == 404
    assert error_of(response) == ErrorCode.UNKNOWN_CHANNEL


async def test_healthz_and_readyz(api: Api):
    health = await api.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await api.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


@pytest.mark.parametrize(
    "params",
    [
        {"channel": "chat:x", "reverse": 1},
        {"channel": "chat:" + "x" * 300},
        {"channel": "chat:x", "limit": True},
    ],
)
def test_history_params_are_checked_like_the_websocket_command(
    server: KizunaProcess, params: dict[str, object]
) -> None:
    r = server.api("history", **params)
    assert (r.status_code, r.json()["error"]["code"]) == (400, 107)


def test_publish_idempotency_key_must_be_a_string(server: KizunaProcess) -> None:
    r = server.api("publish", channel="chat:x", data=1, idempotency_key=5)
    assert (r.status_code, r.json()["error"]["code"]) == (400, 107)


async def test_revoke_user_closes_connections_and_refuses_old_tokens(
    server: KizunaProcess, open_py: OpenPy, uid: str
) -> None:
    user = f"revoked-{uid}"
    client = await open_py(server.ws_url)
    old = token(user)
    await client.connect(old)
    r = server.api("revoke_user", user=user)
    assert r.status_code == 200
    closed = await client.expect_close()
    assert closed.code == DisconnectCode.FORBIDDEN
    again = await open_py(server.ws_url)
    assert await again.error_code("connect", token=old) == ErrorCode.UNAUTHORIZED
    bad = server.api("revoke_user", user=user, before="yesterday")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, 107)
