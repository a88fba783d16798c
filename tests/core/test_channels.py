from __future__ import annotations

import pytest

from kizuna.core.channels import ChannelRules, namespace_of
from kizuna.core.options import NamespaceOptions
from kizuna.core.ports import Credentials
from kizuna.exceptions import ProtocolError
from kizuna.protocol.codes import ErrorCode

RULES = ChannelRules(
    {
        "chat": NamespaceOptions(),
        "feed": NamespaceOptions(allow_publish=False),
        "public": NamespaceOptions(allow_anonymous=True),
    }
)


def code_of(call: object) -> int:
    assert callable(call)
    with pytest.raises(ProtocolError) as info:
        call()
    return int(info.value.code)


def test_namespace_of() -> None:
    assert namespace_of("chat:room:1") == "chat"
    assert namespace_of("plain") == ""


@pytest.mark.parametrize("channel", ["nope:x", "chat:", "plain", ":x"])
def test_unknown_channels(channel: str) -> None:
    assert code_of(lambda: RULES.options(channel)) == ErrorCode.UNKNOWN_CHANNEL


def test_channels_claim_limits_access_with_patterns() -> None:
    creds = Credentials("u", channels=("chat:room-*", "chat:exact"))
    RULES.check_subscribe("chat:room-1", creds)
    RULES.check_publish("chat:exact", creds)
    assert code_of(lambda: RULES.check_subscribe("chat:other", creds)) == 103
    assert code_of(lambda: RULES.check_publish("chat:roomX", creds)) == 103


def test_publish_forbidden_by_namespace() -> None:
    assert code_of(lambda: RULES.check_publish("feed:x", Credentials("u"))) == 103
    RULES.check_subscribe("feed:x", Credentials("u"))


def test_anonymous_only_where_allowed() -> None:
    RULES.check_subscribe("public:x", None)
    assert code_of(lambda: RULES.check_subscribe("chat:x", None)) == 103
