"""Bytes in, commands out; replies and pushes in, bytes out. No I/O.

Theory of operation
-------------------
A frame holds one or more JSON objects separated by ``\\n``. Each object is a
command ``{"id": <int ≥ 1>, "method": <name>, "params": {...}}``.

Decoding sorts every line into one of three outcomes:

1. a :data:`~kizuna.protocol.messages.Command` — well formed;
2. a :class:`~kizuna.protocol.messages.CommandRejected` — the line names a
   valid ``id`` but an unknown method or bad params: the server answers an
   error reply with that id and keeps the connection;
3. :class:`~kizuna.exceptions.ProtocolError` raised — the line is not JSON, not
   an object, or has no usable ``id``: there is nobody to answer, so the server
   closes with 4001 (bad request).

Encoding builds the bytes a client reads. Publications are encoded once per
channel and the same bytes go to every subscriber (see core/hub.py), so
:func:`encode_publication_push` is on the hot path and kept lean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from kizuna.exceptions import ProtocolError
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.messages import (
    ClientInfo,
    Command,
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

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "decode_frame",
    "encode_disconnect_push",
    "encode_error_reply",
    "encode_join_push",
    "encode_leave_push",
    "encode_publication",
    "encode_publication_push",
    "encode_reply",
    "encode_unsubscribe_push",
    "join_frame",
    "parse_params",
]

MAX_CHANNEL_LENGTH = 255
"""Longest channel name accepted, in characters."""

_MAX_ID = 2**53 - 1  # the largest integer a JavaScript client can hold exactly


class _BadParams(Exception):
    """Raised inside a param parser; becomes a 107 reply for that command."""


Params = Mapping[str, Any]


def _channel(params: Params) -> str:
    channel = params.get("channel")
    if not isinstance(channel, str) or not channel:
        raise _BadParams("channel must be a non-empty string")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise _BadParams(f"channel longer than {MAX_CHANNEL_LENGTH} characters")
    return channel


def _optional_str(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise _BadParams(f"{name} must be a string")
    return value


def _position(params: Params, name: str) -> StreamPosition | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _BadParams(f"{name} must be an object with offset and epoch")
    offset, epoch = raw.get("offset"), raw.get("epoch")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _BadParams(f"{name}.offset must be a non-negative integer")
    if not isinstance(epoch, str):
        raise _BadParams(f"{name}.epoch must be a string")
    return StreamPosition(offset, epoch)


def _parse_connect(cid: int, params: Params) -> Command:
    return Connect(cid, _optional_str(params, "token"), _optional_str(params, "name"))


def _parse_subscribe(cid: int, params: Params) -> Command:
    return Subscribe(cid, _channel(params), _position(params, "since"))


def _parse_unsubscribe(cid: int, params: Params) -> Command:
    return Unsubscribe(cid, _channel(params))


def _parse_publish(cid: int, params: Params) -> Command:
    channel = _channel(params)
    if "data" not in params:
        raise _BadParams("data is required")
    return Publish(
        cid, channel, orjson.dumps(params["data"]), _optional_str(params, "idempotency_key")
    )


def _parse_history(cid: int, params: Params) -> Command:
    limit = params.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise _BadParams("limit must be a non-negative integer")
    reverse = params.get("reverse", False)
    if not isinstance(reverse, bool):
        raise _BadParams("reverse must be a boolean")
    return History(cid, _channel(params), limit, _position(params, "since"), reverse)


def _parse_presence(cid: int, params: Params) -> Command:
    return Presence(cid, _channel(params))


def _parse_presence_stats(cid: int, params: Params) -> Command:
    return PresenceStats(cid, _channel(params))


def _parse_ping(cid: int, params: Params) -> Command:
    return Ping(cid)


def _parse_refresh(cid: int, params: Params) -> Command:
    token = params.get("token")
    if not isinstance(token, str) or not token:
        raise _BadParams("token must be a non-empty string")
    return Refresh(cid, token)


_PARSERS: dict[str, Callable[[int, Params], Command]] = {
    "connect": _parse_connect,
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "publish": _parse_publish,
    "history": _parse_history,
    "presence": _parse_presence,
    "presence_stats": _parse_presence_stats,
    "ping": _parse_ping,
    "refresh": _parse_refresh,
}

METHODS = frozenset(_PARSERS)


def parse_params(method: str, params: Mapping[str, Any]) -> Command:
    """A command from its method and params alone (the HTTP API has no frames or ids).

    The same validation as a frame; raises ProtocolError 104 or 107.
    """
    parser = _PARSERS.get(method)
    if parser is None:
        raise ProtocolError(ErrorCode.METHOD_NOT_FOUND, f"unknown method {method!r}")
    try:
        return parser(0, params)
    except _BadParams as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from exc


def _decode_line(line: bytes | str) -> Command | CommandRejected:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a command must be a JSON object")
    cid = obj.get("id")
    if not isinstance(cid, int) or isinstance(cid, bool) or not 1 <= cid <= _MAX_ID:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "command id must be a positive integer")
    method = obj.get("method")
    parser = _PARSERS.get(method) if isinstance(method, str) else None
    if parser is None:
        code = ErrorCode.METHOD_NOT_FOUND
        return CommandRejected(cid, code, f"{code.description}: {method!r}")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        return CommandRejected(cid, ErrorCode.BAD_REQUEST, "params must be an object")
    try:
        return parser(cid, params)
    except _BadParams as exc:
        return CommandRejected(cid, ErrorCode.BAD_REQUEST, str(exc))


def decode_frame(frame: bytes | str) -> list[Command | CommandRejected]:
    """Decode one frame: newline-delimited JSON commands. Blank lines are ignored.

    Raises ProtocolError (bad request) when a line cannot be answered at all.
    """
    if isinstance(frame, str):
        lines: Iterable[bytes | str] = frame.split("\n") if "\n" in frame else (frame,)
    else:
        lines = frame.split(b"\n") if b"\n" in frame else (frame,)
    out: list[Command | CommandRejected] = []
    for line in lines:
        if line.strip():
            out.append(_decode_line(line))
    if not out:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty frame")
    return out


# --- encoding --------------------------------------------------------------------------------


def _info(info: ClientInfo) -> dict[str, str]:
    return {"user": info.user, "client": info.client}


def encode_reply(cid: int, result: Mapping[str, Any] | None = None) -> bytes:
    """A successful reply. ``result`` may hold orjson.Fragment values (pre-encoded JSON)."""
    return orjson.dumps({"id": cid, "result": result if result is not None else {}})


def encode_error_reply(cid: int, code: int, message: str) -> bytes:
    return orjson.dumps({"id": cid, "error": {"code": code, "message": message}})


def publication_dict(pub: Publication, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object of one publication, as it appears in pushes and history.

    ``into``: a dict to add the publication's fields to (a push's, which comes first
    in key order) instead of a new one.
    """
    out = {} if into is None else into
    out["data"] = orjson.Fragment(pub.data)
    if pub.offset:
        out["offset"] = pub.offset
    info = pub.info
    if info is not None:
        out["info"] = {"user": info.user, "client": info.client}
    return out


def encode_publication(pub: Publication) -> orjson.Fragment:
    """A publication as a pre-encoded JSON fragment, for history lists."""
    return orjson.Fragment(orjson.dumps(publication_dict(pub)))


def encode_publication_push(channel: str, pub: Publication, epoch: str | None = None) -> bytes:
    """The push every subscriber of ``channel`` receives. Encoded once per fan-out."""
    out = publication_dict(pub, {"push": "pub", "channel": channel})
    if epoch and pub.offset:
        out["epoch"] = epoch
    return orjson.dumps(out)


def encode_join_push(channel: str, info: ClientInfo) -> bytes:
    return orjson.dumps({"push": "join", "channel": channel, "info": _info(info)})


def encode_leave_push(channel: str, info: ClientInfo) -> bytes:
    return orjson.dumps({"push": "leave", "channel": channel, "info": _info(info)})


def encode_unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    return orjson.dumps({"push": "unsubscribe", "channel": channel, "code": code, "reason": reason})


def encode_disconnect_push(code: int, reason: str, reconnect: bool) -> bytes:
    return orjson.dumps(
        {"push": "disconnect", "code": code, "reason": reason, "reconnect": reconnect}
    )


def join_frame(messages: Sequence[bytes | memoryview]) -> bytes:
    """Coalesce queued messages into one frame, newline-delimited.

    A single message is returned as is — the same bytes object every subscriber
    of a fan-out shares — so the common case copies nothing.
    """
    first = messages[0]
    return first if len(messages) == 1 and type(first) is bytes else b"\n".join(messages)
