"""Mappings at the gRPC boundary: codes to statuses, peers to addresses, pushes to messages."""

from __future__ import annotations

import grpc
import orjson
import pytest

from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.transports.grpc import (
    DISCONNECT_STATUS,
    ERROR_STATUS,
    chat_message_from_push,
    remote_addr,
)


def test_every_error_code_has_a_status() -> None:
    assert set(ERROR_STATUS) == set(ErrorCode)
    assert grpc.StatusCode.OK not in ERROR_STATUS.values()


def test_every_disconnect_code_has_a_status() -> None:
    assert set(DISCONNECT_STATUS) == set(DisconnectCode)
    assert grpc.StatusCode.OK not in DISCONNECT_STATUS.values()


def test_codes_that_allow_reconnecting_map_to_statuses_a_client_retries() -> None:
    """3xxx: come back later (and recover); 4xxx: change something first."""
    retryable = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAUTHENTICATED,  # 3006: refresh the token, then reconnect
    }
    for code, status in DISCONNECT_STATUS.items():
        if code.reconnect:
            assert status in retryable, code
        else:
            assert status not in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}, code


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50432", "127.0.0.1:50432"),
        ("ipv6:%5B::1%5D:50432", "::1:50432"),
        ("ipv6:[2001:db8::7]:9", "2001:db8::7:9"),
        ("unix:/run/kizuna.sock", ""),
    ],
)
def test_peers_are_written_as_the_other_edges_write_addresses(peer: str, address: str) -> None:
    assert remote_addr(peer) == address


def test_a_publication_that_is_no_chat_message_arrives_whole() -> None:
    push = {
        "push": "pub",
        "channel": "chat:x",
        "data": {"text": "hi", "n": 2},
        "offset": 7,
        "epoch": "e1",
    }
    message = chat_message_from_push(orjson.loads(orjson.dumps(push)))
    assert orjson.loads(message.content) == {"text": "hi", "n": 2}
    assert (message.user_id, message.timestamp, message.client_id) == ("", 0, "")
    assert (message.channel, message.offset, message.epoch) == ("chat:x", 7, "e1")


def test_the_publishers_token_names_the_user_not_the_payload() -> None:
    push = {
        "push": "pub",
        "channel": "chat:x",
        "data": {"userId": "mallory", "content": "hi", "timestamp": 2**70},
        "info": {"user": "alice", "client": "c1"},
    }
    message = chat_message_from_push(push)
    assert (message.user_id, message.client_id, message.content) == ("alice", "c1", "hi")
    assert message.timestamp == 0  # out of int64 range: unknown rather than an error
    without_info = chat_message_from_push({**push, "info": None})
    assert without_info.user_id == "mallory"  # published by the server API, no token
