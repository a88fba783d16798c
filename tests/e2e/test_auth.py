"""Tokens end to end: in the connect command and at the WebSocket handshake.

A token in the connect command is answered like any command: an error reply
(101 unauthorized, 109 expired) and the connection is still unauthenticated.
A token in the handshake (``Authorization: Bearer`` or ``?token=``) is checked
before the upgrade: a bad one gets HTTP 401 with a JSON error body, so the
browser never gets a socket at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any

import pytest

from kizuna.protocol.codes import DisconnectCode, ErrorCode
from tests.e2e.clients import HandshakeRefused, PyClient, token
from tests.e2e.conftest import OpenNode, OpenPy
from tests.support.processes import KizunaProcess, serve

AUDIENCE = "kizuna-e2e"

BAD_TOKENS: dict[str, tuple[dict[str, Any], ErrorCode]] = {
    "expired": ({"ttl": -60}, ErrorCode.TOKEN_EXPIRED),
    "wrong-signature": ({"secret": "another-secret-0123456789abcdef0123"}, ErrorCode.UNAUTHORIZED),
    "alg-none": ({"algorithm": "none"}, ErrorCode.UNAUTHORIZED),
    "missing-exp": ({"ttl": None}, ErrorCode.UNAUTHORIZED),
    "missing-sub": ({"sub": None}, ErrorCode.UNAUTHORIZED),
}


def open_with_token(open_py: OpenPy, url: str, jwt_token: str, where: str) -> Awaitable[PyClient]:
    """Open a WebSocket carrying the token in the handshake: a Bearer header or ``?token=``."""
    if where == "bearer":
        return open_py(url, headers={"Authorization": f"Bearer {jwt_token}"})
    return open_py(f"{url}?token={jwt_token}")


def bad_token(kind: str) -> tuple[str, ErrorCode]:
    kwargs, code = BAD_TOKENS[kind]
    return token(**kwargs), code


async def test_valid_token_in_connect_command(server: KizunaProcess, open_py: OpenPy, uid: str):
    client = await open_py(server.ws_url)
    result = await client.connect(token(f"alice-{uid}", ttl=600))
    assert isinstance(result["client"], str)
    assert result["client"]
    assert result["expires"] is True
    assert 590 <= result["ttl"] <= 600
    channel = f"chat:auth-{uid}"
    assert (await client.call("subscribe", channel=channel))["recoverable"] is True
    presence = await client.call("presence", channel=channel)
    assert presence["clients"] == {
        result["client"]: {"user": f"alice-{uid}", "client": result["client"]}
    }


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_in_connect_command_is_refused(
    server: KizunaProcess, open_py: OpenPy, kind: str
):
    client = await open_py(server.ws_url)
    jwt_token, code = bad_token(kind)
    reply = await client.request("connect", {"token": jwt_token})
    assert reply["error"]["code"] == code, reply
    # Still not connected: any other command is a protocol violation (4001).
    await client.send({"id": 99, "method": "subscribe", "params": {"channel": "chat:x"}})
    closed = await client.expect_close()
    assert closed.code == DisconnectCode.BAD_REQUEST


async def test_connect_may_be_retried_after_a_bad_token(
    server: KizunaProcess, open_py: OpenPy, uid: str
):
    client = await open_py(server.ws_url)
    assert await client.error_code("connect", token=token(ttl=-60)) == ErrorCode.TOKEN_EXPIRED
    assert (await client.connect(token(f"retry-{uid}")))["client"]
    assert (await client.call("subscribe", channel=f"chat:retry-{uid}"))["recoverable"] is True


async def test_connect_without_any_token_is_closed_4002(server: KizunaProcess, open_py: OpenPy):
    client = await open_py(server.ws_url)
    await client.send({"id": 1, "method": "connect", "params": {}})
    closed = await client.expect_close()
    assert closed.code == DisconnectCode.UNAUTHORIZED


@pytest.mark.parametrize("where", ["bearer", "query"])
async def test_valid_token_in_handshake(
    server: KizunaProcess, open_py: OpenPy, uid: str, where: str
):
    user = f"bob-{uid}"
    client = await open_with_token(open_py, server.ws_url, token(user), where)
    result = await client.connect()  # no token: the handshake's credentials count
    channel = f"chat:hs-{uid}"
    await client.call("subscribe", channel=channel)
    presence = await client.call("presence", channel=channel)
    assert presence["clients"][result["client"]]["user"] == user


@pytest.mark.parametrize("where", ["bearer", "query"])
@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_in_handshake_gets_401_before_upgrade(
    server: KizunaProcess, open_py: OpenPy, kind: str, where: str
):
    jwt_token, code = bad_token(kind)
    with pytest.raises(HandshakeRefused) as refused:
        await open_with_token(open_py, server.ws_url, jwt_token, where)
    assert refused.value.status == 401
    body = refused.value.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)


@pytest.mark.node
async def test_bad_handshake_token_refused_for_node_client(
    server: KizunaProcess, open_node: OpenNode
):
    with pytest.raises(HandshakeRefused) as refused:
        await open_node(server.ws_url, headers={"Authorization": f"Bearer {token(ttl=-60)}"})
    assert refused.value.status == 401
    assert refused.value.json()["error"]["code"] == ErrorCode.TOKEN_EXPIRED


async def test_channels_claim_excludes_a_channel(server: KizunaProcess, open_py: OpenPy, uid: str):
    allowed = f"chat:open-{uid}"
    client = await open_py(server.ws_url)
    await client.connect(token(f"carol-{uid}", channels=[f"chat:open-{uid}*"]))
    assert (await client.call("subscribe", channel=allowed))["recoverable"] is True
    secret = f"chat:secret-{uid}"
    assert await client.error_code("subscribe", channel=secret) == ErrorCode.PERMISSION_DENIED
    assert await client.error_code("publish", channel=secret, data={}) == (
        ErrorCode.PERMISSION_DENIED
    )
    assert await client.error_code("history", channel=secret) == ErrorCode.PERMISSION_DENIED
    # The refusals did not cost the connection.
    assert await client.call("publish", channel=allowed, data={"n": 1})


# --- a server that requires an audience --------------------------------------------------------


@pytest.fixture(scope="module")
def audience_server() -> Iterator[KizunaProcess]:
    with serve("--jwt-audience", AUDIENCE) as process:
        yield process


async def test_audience_accepted(audience_server: KizunaProcess, open_py: OpenPy, uid: str):
    client = await open_py(audience_server.ws_url)
    result = await client.connect(token(f"dave-{uid}", aud=AUDIENCE))
    assert result["client"]


@pytest.mark.parametrize("aud", ["someone-else", None])
async def test_wrong_or_missing_audience_refused(
    audience_server: KizunaProcess, open_py: OpenPy, aud: str | None
):
    claims: dict[str, Any] = {"aud": aud} if aud is not None else {}
    client = await open_py(audience_server.ws_url)
    reply = await client.request("connect", {"token": token(**claims)})
    assert reply["error"]["code"] == ErrorCode.UNAUTHORIZED
    with pytest.raises(HandshakeRefused) as refused:
        await open_py(
            audience_server.ws_url, headers={"Authorization": f"Bearer {token(**claims)}"}
        )
    assert refused.value.status == 401
    assert refused.value.json()["error"]["code"] == ErrorCode.UNAUTHORIZED
