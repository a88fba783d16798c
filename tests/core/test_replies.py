"""Every way a pipelined publish ends has its reply, with the documented code."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from kizuna.core.replies import PublishOutcome, publish_reply
from kizuna.exceptions import BrokerError, BrokerUnavailable, ProtocolError
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.messages import StreamPosition


@pytest.mark.parametrize(
    ("outcome", "code", "reply"),
    [
        (StreamPosition(7, "e1"), 0, {"id": 5, "result": {"offset": 7, "epoch": "e1"}}),
        (StreamPosition(0, ""), 0, {"id": 5, "result": {}}),
        ({}, 0, {"id": 5, "result": {}}),
        (ErrorCode.TOO_MANY_REQUESTS, 111, None),
        (ProtocolError(ErrorCode.PERMISSION_DENIED, "no"), 103, None),
        (BrokerUnavailable("down"), 113, None),
        (BrokerError("odd reply"), 113, None),
        (RuntimeError("a bug"), 100, None),
        (asyncio.CancelledError(), 100, None),
    ],
)
def test_each_outcome_gets_its_reply(
    outcome: PublishOutcome, code: int, reply: dict[str, object] | None
) -> None:
    data, error = publish_reply(5, outcome)
    assert error == code
    message = orjson.loads(data)
    assert message["id"] == 5
    if reply is not None:
        assert message == reply
    else:
        assert message["error"]["code"] == code
        assert message["error"]["message"]
