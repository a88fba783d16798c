"""Who may connect: tokens from ``auth.token`` (or the handshake), and the Origin rule."""

from __future__ import annotations

import pytest

from tests.socketio.clients import SioDriver, token
from tests.socketio.conftest import ALLOWED_ORIGIN
from tests.support.processes import KizunaProcess

BAD_AUTH = [
    ({"token": "not-a-jwt"}, 101),
    ({"token": token("mallory", secret="another-secret-0123456789abcdef0123")}, 101),
    ({"token": token("late", ttl=-60)}, 109),
    ({"token": 12345}, 101),
    ({}, 4002),
]
"""auth payloads (garbage, wrong key, expired, not a string, missing) → the code in ``data``."""


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_bad_or_missing_token_is_connect_error_unauthorized(
    server: KizunaProcess, sio: SioDriver, transport: str
) -> None:
    """The guide's client checks ``error.message === 'unauthorized'`` to refresh its token."""
    for auth, code in BAD_AUTH:
        sock = await sio.open(server.url + "/chat", auth=auth, transports=[transport])
        assert not sock.connected, auth
        assert sock.first["event"] == "connect_error"
        assert sock.first["message"] == "unauthorized"
        assert sock.first["data"]["code"] == code, auth


async def test_token_in_the_handshake_query(server: KizunaProcess, sio: SioDriver) -> None:
    """Without ``auth``, a token on the handshake request (as for the native endpoints) works."""
    sock = await sio.open(
        server.url + "/chat", query={"token": token("quentin")}, transports=["websocket"]
    )
    assert sock.connected, sock.first
    assert (await sock.ack("joinRoom", "q-room"))["ok"] is True


async def test_refused_client_can_retry_with_a_new_token(
    server: KizunaProcess, sio: SioDriver
) -> None:
    """The guide's refresh loop: connect_error 'unauthorized', new auth.token, connect again."""
    refused = await sio.open(server.url + "/chat", auth={"token": "stale"}, transports=["polling"])
    assert refused.first["message"] == "unauthorized"
    again = await sio.open(
        server.url + "/chat", auth={"token": token("rita")}, transports=["polling"]
    )
    assert again.connected, again.first


async def test_unknown_namespace_is_refused(server: KizunaProcess, sio: SioDriver) -> None:
    sock = await sio.open(server.url + "/nope", auth={"token": token("u")}, transports=["polling"])
    assert sock.first["event"] == "connect_error"
    # The default namespace is not served either: only kizuna's namespaces are.
    root = await sio.open(server.url + "/", auth={"token": token("u")}, transports=["polling"])
    assert root.first["event"] == "connect_error"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_origin_rule(server: KizunaProcess, sio: SioDriver, transport: str) -> None:
    """kizuna's Origin rule: the allowlist and the same host pass; any other Origin is refused."""
    auth = {"token": token("olga")}
    url = server.url + "/chat"
    evil = await sio.open(
        url, auth=auth, transports=[transport], extraHeaders={"Origin": "http://evil.example"}
    )
    assert evil.first["event"] == "connect_error"
    assert evil.first["message"] in ("websocket error", "xhr poll error")
    for origin in (ALLOWED_ORIGIN, server.url):
        ok = await sio.open(url, auth=auth, transports=[transport], extraHeaders={"Origin": origin})
        assert ok.connected, (origin, ok.first)
