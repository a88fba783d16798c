"""The client's decoding of server frames: valid messages typed, garbage refused clearly."""

from __future__ import annotations

import orjson
import pytest

from kizuna.client import Join, MalformedFrame, Publication, Unsubscribed
from kizuna.client.frames import (
    DisconnectPush,
    ErrorReply,
    Reply,
    decode_server_frame,
    encode_command,
    parse_connect_result,
    parse_history_result,
    parse_presence_result,
    parse_publish_result,
    parse_subscribe_result,
)
from kizuna.protocol import ClientInfo, StreamPosition, codec
from kizuna.protocol import Publication as WirePublication


def test_a_coalesced_frame_decodes_in_order() -> None:
    # Built with the server's own encoders, so client and server cannot drift apart.
    info = ClientInfo("alice", "c1")
    frame = codec.join_frame(
        [
            codec.encode_reply(3, {"offset": 7, "epoch": "e"}),
            codec.encode_publication_push("chat:a", WirePublication(b'{"t":1}', 8, info), "e"),
            codec.encode_join_push("chat:a", info),
            codec.encode_unsubscribe_push("chat:a", 2500, "gone"),
            codec.encode_error_reply(4, 103, "permission denied"),
            codec.encode_disconnect_push(3001, "shutdown", True),
        ]
    )
    assert decode_server_frame(frame) == [
        Reply(3, {"offset": 7, "epoch": "e"}),
        Publication("chat:a", {"t": 1}, 8, "e", info),
        Join("chat:a", info),
        Unsubscribed("chat:a", 2500, "gone"),
        ErrorReply(4, 103, "permission denied"),
        DisconnectPush(3001, "shutdown", True),
    ]


def test_a_publication_without_history_has_no_position() -> None:
    frame = codec.encode_publication_push("chat:a", WirePublication(b'"x"'))
    [pub] = decode_server_frame(frame)
    assert isinstance(pub, Publication)
    assert (pub.offset, pub.epoch, pub.position) == (0, None, None)


def test_unknown_push_kinds_are_ignored_for_forward_compatibility() -> None:
    assert decode_server_frame('{"push":"sparkle","x":1}\n{"id":1,"result":{}}') == [Reply(1, {})]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("<html>502 Bad Gateway</html>", "not JSON: '<html>502 Bad Gateway</html>'"),
        ("[1,2]", "not a JSON object"),
        ('{"hello":1}', "neither a reply (id) nor a push"),
        ('{"id":0,"result":{}}', "reply id must be a positive integer, got 0"),
        ('{"id":"7","result":{}}', "reply id must be a positive integer, got '7'"),
        ('{"id":true,"result":{}}', "reply id must be a positive integer, got True"),
        ('{"id":1,"result":[]}', "reply 1: result must be an object"),
        ('{"id":1}', "reply 1: result must be an object"),
        ('{"id":1,"error":"boom"}', "reply 1: error must be an object"),
        ('{"id":1,"error":{"code":"x","message":"m"}}', "code must be an integer"),
        ('{"push":"pub","channel":"c"}', "publication without data"),
        ('{"push":"pub","data":1}', "channel must be a string"),
        ('{"push":"pub","channel":"","data":1}', "channel must not be empty"),
        ('{"push":"pub","channel":"c","data":1,"offset":-1,"epoch":"e"}', "offset must be"),
        ('{"push":"pub","channel":"c","data":1,"offset":3}', "must carry its epoch"),
        ('{"push":"pub","channel":"c","data":1,"info":"bob"}', "info must be an object"),
        ('{"push":"join","channel":"c","info":{"user":1,"client":"x"}}', "user must be"),
        ('{"push":"disconnect","code":3001,"reason":"x"}', "reconnect must be a boolean"),
        ('{"push":7}', "push must be a string"),
    ],
)
def test_malformed_lines_raise_a_clear_error(line: str, message: str) -> None:
    with pytest.raises(MalformedFrame) as caught:
        decode_server_frame('{"id":1,"result":{}}\n' + line)
    assert message in str(caught.value)


def test_long_garbage_is_quoted_short() -> None:
    with pytest.raises(MalformedFrame) as caught:
        decode_server_frame(b"x" * 10_000)
    assert len(str(caught.value)) < 120


def test_subscribe_result_with_recovery() -> None:
    result = orjson.loads(
        codec.encode_reply(
            1,
            {
                "recoverable": True,
                "offset": 5,
                "epoch": "e",
                "recovered": True,
                "publications": [
                    codec.encode_publication(WirePublication(b"4", 4)),
                    codec.encode_publication(WirePublication(b"5", 5)),
                ],
            },
        )
    )["result"]
    parsed = parse_subscribe_result(result, "chat:a")
    assert parsed.recovered
    assert parsed.position == StreamPosition(5, "e")
    assert [(p.data, p.offset, p.epoch) for p in parsed.publications] == [(4, 4, "e"), (5, 5, "e")]


def test_subscribe_result_without_history() -> None:
    parsed = parse_subscribe_result({}, "notifications:x")
    assert (parsed.recoverable, parsed.position, parsed.publications) == (False, None, [])


@pytest.mark.parametrize(
    "result",
    [
        {"recoverable": True, "epoch": "e"},
        {"recoverable": True, "offset": 1, "epoch": 5},
        {"recoverable": "yes", "offset": 1, "epoch": "e"},
        {"recoverable": True, "offset": 1, "epoch": "e", "publications": {}},
        {
            "recoverable": True,
            "offset": 2,
            "epoch": "e",
            "recovered": True,
            "publications": [{"data": 1, "offset": 2}, {"data": 1, "offset": 1}],
        },
        {
            "recoverable": True,
            "offset": 2,
            "epoch": "e",
            "recovered": True,
            "publications": [{"data": 1, "offset": 3}],
        },
    ],
)
def test_bad_subscribe_results_are_malformed(result: dict[str, object]) -> None:
    with pytest.raises(MalformedFrame, match="subscribe result for 'chat:a'"):
        parse_subscribe_result(result, "chat:a")


def test_other_results() -> None:
    assert parse_connect_result({"client": "c", "version": "1", "expires": True, "ttl": 5}).ttl == 5
    assert parse_connect_result({"client": "c", "expires": False}).ttl is None
    assert parse_publish_result({}) is None
    assert parse_publish_result({"offset": 2, "epoch": "e"}) == StreamPosition(2, "e")
    page = parse_history_result(
        {"publications": [{"data": 1, "offset": 1}], "offset": 1, "epoch": "e"}, "c"
    )
    assert page.publications[0].position == StreamPosition(1, "e")
    assert parse_presence_result({"clients": {"c1": {"user": "u", "client": "c1"}}}) == {
        "c1": ClientInfo("u", "c1")
    }
    with pytest.raises(MalformedFrame, match="connect result: client"):
        parse_connect_result({})
    with pytest.raises(MalformedFrame, match="presence result"):
        parse_presence_result({"clients": []})


def test_encode_command() -> None:
    assert orjson.loads(encode_command(3, "publish", {"channel": "c", "data": [1]})) == {
        "id": 3,
        "method": "publish",
        "params": {"channel": "c", "data": [1]},
    }
    with pytest.raises(TypeError):
        encode_command(1, "publish", {"data": object()})
