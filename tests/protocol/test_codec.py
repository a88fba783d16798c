"""The codec without an event loop: bytes in, commands or errors out; objects in, bytes out."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kizuna.exceptions import ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.messages import (
    ClientInfo,
    CommandRejected,
    Connect,
    History,
    Ping,
    Presence,
    PresenceStats,
    Publication,
    Publish,
    Refresh,
    StreamPosition,
    Subscribe,
    Unsubscribe,
)


def line(cid: object, method: object, params: object = None) -> bytes:
    obj: dict[str, object] = {"id": cid, "method": method}
    if params is not None:
        obj["params"] = params
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (line(1, "connect", {"token": "t", "name": "n"}), Connect(1, "t", "n")),
        (line(2, "connect"), Connect(2)),
        (line(3, "subscribe", {"channel": "chat:a"}), Subscribe(3, "chat:a")),
        (
            line(4, "subscribe", {"channel": "chat:a", "since": {"offset": 5, "epoch": "e"}}),
            Subscribe(4, "chat:a", StreamPosition(5, "e")),
        ),
        (line(5, "unsubscribe", {"channel": "chat:a"}), Unsubscribe(5, "chat:a")),
        (
            line(6, "publish", {"channel": "chat:a", "data": {"x": [1, 2]}}),
            Publish(6, "chat:a", b'{"x":[1,2]}'),
        ),
        (
            line(7, "publish", {"channel": "c:a", "data": None, "idempotency_key": "k"}),
            Publish(7, "c:a", b"null", "k"),
        ),
        (
            line(8, "history", {"channel": "c:a", "limit": 3, "reverse": True}),
            History(8, "c:a", 3, None, True),
        ),
        (line(9, "presence", {"channel": "c:a"}), Presence(9, "c:a")),
        (line(10, "presence_stats", {"channel": "c:a"}), PresenceStats(10, "c:a")),
        (line(11, "ping"), Ping(11)),
        (line(12, "refresh", {"token": "t2"}), Refresh(12, "t2")),
    ],
)
def test_decodes_every_command(raw: bytes, expected: object) -> None:
    assert codec.decode_frame(raw) == [expected]
    assert codec.decode_frame(raw.decode()) == [expected]


def test_several_commands_per_frame_in_order() -> None:
    frame = b"\n".join([line(1, "ping"), b"", line(2, "ping"), line(3, "ping")])
    assert codec.decode_frame(frame) == [Ping(1), Ping(2), Ping(3)]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"a string"',
        line(0, "ping"),
        line(-1, "ping"),
        line("1", "ping"),
        line(True, "ping"),
        line(2**53, "ping"),
        b'{"method": "ping"}',
        b"",
        b"\n\n",
    ],
)
def test_unanswerable_lines_raise_bad_request(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_frame(raw)
    assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (line(1, "nope"), ErrorCode.METHOD_NOT_FOUND, "nope"),
        (line(1, 42), ErrorCode.METHOD_NOT_FOUND, "42"),
        (line(1, "subscribe", {}), ErrorCode.BAD_REQUEST, "channel"),
        (line(1, "subscribe", {"channel": ""}), ErrorCode.BAD_REQUEST, "channel"),
        (line(1, "subscribe", {"channel": "x" * 256}), ErrorCode.BAD_REQUEST, "255"),
        (line(1, "subscribe", {"channel": "c:a", "since": 3}), ErrorCode.BAD_REQUEST, "since"),
        (
            line(1, "subscribe", {"channel": "c:a", "since": {"offset": -1, "epoch": "e"}}),
            ErrorCode.BAD_REQUEST,
            "offset",
        ),
        (
            line(1, "subscribe", {"channel": "c:a", "since": {"offset": 1, "epoch": 2}}),
            ErrorCode.BAD_REQUEST,
            "epoch",
        ),
        (line(1, "publish", {"channel": "c:a"}), ErrorCode.BAD_REQUEST, "data"),
        (line(1, "history", {"channel": "c:a", "limit": -1}), ErrorCode.BAD_REQUEST, "limit"),
        (line(1, "history", {"channel": "c:a", "limit": True}), ErrorCode.BAD_REQUEST, "limit"),
        (line(1, "history", {"channel": "c:a", "reverse": 1}), ErrorCode.BAD_REQUEST, "reverse"),
        (line(1, "refresh", {}), ErrorCode.BAD_REQUEST, "token"),
        (line(1, "connect", {"token": 5}), ErrorCode.BAD_REQUEST, "token"),
        (line(1, "ping", [1]), ErrorCode.BAD_REQUEST, "params"),
    ],
)
def test_bad_commands_are_rejected_with_their_id(raw: bytes, code: int, fragment: str) -> None:
    [rejected] = codec.decode_frame(raw)
    assert isinstance(rejected, CommandRejected)
    assert rejected.id == 1
    assert rejected.code == code
    assert fragment in rejected.message


@given(st.binary(max_size=512))
def test_any_bytes_give_commands_or_a_protocol_error(data: bytes) -> None:
    try:
        out = codec.decode_frame(data)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
    else:
        assert out


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_any_json_value_gives_commands_or_a_protocol_error(value: object) -> None:
    try:
        out = codec.decode_frame(orjson.dumps({"id": 1, "method": "publish", "params": value}))
    except ProtocolError:
        pytest.fail("a line with a valid id must be answered, not dropped")
    assert len(out) == 1


def test_publication_push_is_one_json_object_with_raw_data() -> None:
    pub = Publication(b'{"text":"hi"}', 7, ClientInfo("alice", "c1"))
    pushed = orjson.loads(codec.encode_publication_push("chat:a", pub, "ep"))
    assert pushed == {
        "push": "pub",
        "channel": "chat:a",
        "data": {"text": "hi"},
        "offset": 7,
        "epoch": "ep",
        "info": {"user": "alice", "client": "c1"},
    }


def test_publication_without_history_has_no_offset_or_epoch() -> None:
    pushed = orjson.loads(codec.encode_publication_push("c:a", Publication(b"1"), "ep"))
    assert pushed == {"push": "pub", "channel": "c:a", "data": 1}


def test_replies_and_pushes() -> None:
    assert orjson.loads(codec.encode_reply(3, {"a": 1})) == {"id": 3, "result": {"a": 1}}
    assert orjson.loads(codec.encode_reply(4)) == {"id": 4, "result": {}}
    assert orjson.loads(codec.encode_error_reply(5, 107, "bad")) == {
        "id": 5,
        "error": {"code": 107, "message": "bad"},
    }
    info = ClientInfo("u", "c")
    assert orjson.loads(codec.encode_join_push("c:a", info))["push"] == "join"
    assert orjson.loads(codec.encode_leave_push("c:a", info))["info"] == {
        "user": "u",
        "client": "c",
    }
    assert orjson.loads(codec.encode_unsubscribe_push("c:a", 3005, "r")) == {
        "push": "unsubscribe",
        "channel": "c:a",
        "code": 3005,
        "reason": "r",
    }
    assert orjson.loads(codec.encode_disconnect_push(3002, "slow", True)) == {
        "push": "disconnect",
        "code": 3002,
        "reason": "slow",
        "reconnect": True,
    }


def test_history_entries_embed_pre_encoded_publications() -> None:
    fragment = codec.encode_publication(Publication(b"[1]", 2))
    assert orjson.loads(orjson.dumps({"p": [fragment]})) == {"p": [{"data": [1], "offset": 2}]}


def test_join_frame_is_newline_delimited_and_round_trips() -> None:
    frame = codec.join_frame([codec.encode_reply(1), codec.encode_reply(2)])
    assert [orjson.loads(x)["id"] for x in frame.split(b"\n")] == [1, 2]
