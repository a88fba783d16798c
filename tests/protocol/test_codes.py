from __future__ import annotations

import pytest

from kizuna.protocol.codes import DisconnectCode, ErrorCode, reconnect_allowed


def test_error_codes_are_in_their_range_and_described() -> None:
    for code in ErrorCode:
        assert 100 <= code <= 199
        assert code.description


@pytest.mark.parametrize("code", list(DisconnectCode))
def test_disconnect_codes_follow_the_reconnect_rule(code: DisconnectCode) -> None:
    assert 3000 <= code <= 4999
    assert code.reconnect is (code < 4000)
    assert code.reason


@pytest.mark.parametrize(
    ("code", "allowed"),
    [(1000, True), (1006, True), (1011, True), (3999, True), (4000, False), (4999, False)],
)
def test_reconnect_rule_for_codes_this_version_does_not_know(code: int, allowed: bool) -> None:
    assert reconnect_allowed(code) is allowed


def test_codes_are_unique() -> None:
    assert len({int(c) for c in DisconnectCode}) == len(DisconnectCode)
    assert len({int(c) for c in ErrorCode}) == len(ErrorCode)
