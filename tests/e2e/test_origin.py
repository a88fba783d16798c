"""Origin checks at the handshake (cross-site WebSocket hijacking), end to end.

A browser sends ``Origin`` with every WebSocket handshake; the server must
refuse a foreign one with HTTP 403 *before* upgrading, and accept its own host
and the allowlisted origins (``--allowed-origins``). Non-browser clients send no
Origin and are let through (they are not a cross-site request).
"""

from __future__ import annotations

import pytest

from kizuna.protocol.codes import ErrorCode
from tests.e2e.clients import HandshakeRefused, token
from tests.e2e.conftest import ALLOWED_ORIGIN, OpenNode, OpenPy
from tests.support.processes import KizunaProcess


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "http://allowed.example.evil", "https://allowed.example"],
)
async def test_foreign_origin_refused_with_403_before_upgrade(
    server: KizunaProcess, open_py: OpenPy, origin: str
):
    with pytest.raises(HandshakeRefused) as refused:
        await open_py(server.ws_url, origin=origin)
    assert refused.value.status == 403
    assert refused.value.json()["error"]["code"] == ErrorCode.PERMISSION_DENIED


@pytest.mark.node
async def test_foreign_origin_refused_for_node_client(server: KizunaProcess, open_node: OpenNode):
    with pytest.raises(HandshakeRefused) as refused:
        await open_node(server.ws_url, origin="http://evil.example")
    assert refused.value.status == 403
    assert refused.value.json()["error"]["code"] == ErrorCode.PERMISSION_DENIED


async def test_foreign_origin_refused_even_with_a_valid_token(
    server: KizunaProcess, open_py: OpenPy
):
    with pytest.raises(HandshakeRefused) as refused:
        await open_py(
            server.ws_url,
            origin="http://evil.example",
            headers={"Authorization": f"Bearer {token()}"},
        )
    assert refused.value.status == 403


async def test_same_host_origin_accepted(server: KizunaProcess, open_py: OpenPy, uid: str):
    client = await open_py(server.ws_url, origin=f"http://127.0.0.1:{server.port}")
    assert (await client.connect(token(f"o-{uid}")))["client"]


@pytest.mark.node
async def test_allowlisted_origin_accepted(
    server: KizunaProcess, open_py: OpenPy, open_node: OpenNode, uid: str
):
    py = await open_py(server.ws_url, origin=ALLOWED_ORIGIN)
    node = await open_node(server.ws_url, origin=ALLOWED_ORIGIN)
    for client in (py, node):
        assert (await client.connect(token(f"a-{uid}")))["client"]
