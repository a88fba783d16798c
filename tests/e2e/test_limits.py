"""Per-user and per-connection limits end to end.

Run against their own server (``--max-connections-per-user 1
--max-channels-per-connection 2``) so the limits cannot interfere with the
other suites' clients.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kizuna.protocol.codes import DisconnectCode, ErrorCode
from tests.e2e.clients import token
from tests.e2e.conftest import OpenNode, OpenPy, serve
from tests.support.processes import KizunaProcess


@pytest.fixture(scope="module")
def limits_server() -> Iterator[KizunaProcess]:
    with serve("--max-connections-per-user", "1", "--max-channels-per-connection", "2") as process:
        yield process


async def test_second_connection_of_a_user_is_closed_3009(
    limits_server: KizunaProcess, open_py: OpenPy, uid: str
):
    first = await open_py(limits_server.ws_url)
    await first.connect(token(f"one-{uid}"))
    second = await open_py(limits_server.ws_url)
    await second.send({"id": 1, "method": "connect", "params": {"token": token(f"one-{uid}")}})
    assert (await second.expect_close()).code == DisconnectCode.CONNECTION_LIMIT
    # The limit is per user: the first connection and other users are unaffected.
    assert await first.call("ping") == {}
    other = await open_py(limits_server.ws_url)
    assert (await other.connect(token(f"two-{uid}")))["client"]


@pytest.mark.node
async def test_third_subscription_is_error_106(
    limits_server: KizunaProcess, open_node: OpenNode, uid: str
):
    client = await open_node(limits_server.ws_url)
    await client.connect(token(f"subs-{uid}"))
    await client.call("subscribe", channel=f"chat:a-{uid}")
    await client.call("subscribe", channel=f"chat:b-{uid}")
    assert await client.error_code("subscribe", channel=f"chat:c-{uid}") == (
        ErrorCode.LIMIT_EXCEEDED
    )
    # The refusal cost nothing else: the connection stays, and a freed slot can be reused.
    await client.call("unsubscribe", channel=f"chat:a-{uid}")
    assert (await client.call("subscribe", channel=f"chat:c-{uid}"))["recoverable"] is True
