from __future__ import annotations

import pytest

from kizuna.protocol.handshake import origin_allowed, parse_query, token_from_request


def test_token_sources_in_order() -> None:
    q = parse_query(b"token=fromquery")
    assert token_from_request({"authorization": "Bearer fromheader"}, q) == "fromheader"
    assert token_from_request({"authorization": "bearer  x "}, {}) == "x"
    assert token_from_request({"authorization": "Basic abc"}, q) == "fromquery"
    assert token_from_request({"cookie": "a=1; kizuna_token=c"}, {}, "kizuna_token") == "c"
    assert token_from_request({"cookie": "kizuna_token=c"}, {}) is None
    assert token_from_request({}, parse_query("token=")) is None
    assert token_from_request({}, {}) is None


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "h:1", [], True),
        ("http://h:1", "h:1", [], True),
        ("http://H:1", "h:1", [], True),
        ("http://evil.example", "h:1", [], False),
        ("null", "h:1", [], False),
        ("http://app.example", "h:1", ["http://app.example"], True),
        ("http://app.example:8080", "h:1", ["http://app.example"], False),
        ("http://evil.example", "h:1", ["*"], True),
        ("http://h:1", None, [], False),
    ],
)
def test_origin_rule(origin: str | None, host: str | None, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok
