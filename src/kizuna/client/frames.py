"""The client's side of the wire, sans-I/O: server frames in, typed messages out.

``kizuna.protocol.codec`` decodes what a *server* reads (commands). This module
decodes what a *client* reads — replies and pushes — and checks their shape,
because a client must not trust its server blindly: a proxy that injects an
HTML error page, a server of another version or a plain bug must end in a
clear :class:`~kizuna.client.errors.MalformedFrame`, never in a ``KeyError``
deep inside an application's handler.

Theory of operation
-------------------
1. :func:`decode_server_frame` splits a frame on ``\\n`` (the server coalesces
   queued messages into one frame) and sorts each line: a line with ``id`` is
   a :class:`Reply` or :class:`ErrorReply`; a line with ``push`` is a push.
2. Pushes of a kind this version does not know are dropped, so a newer server
   can add kinds without breaking older clients. Known kinds are checked field
   by field.
3. A reply's ``result`` is checked only when the command it answers is known:
   the ``parse_*_result`` functions below turn it into typed values.

Every check raises :class:`MalformedFrame` naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from kizuna.client.errors import MalformedFrame
from kizuna.client.events import (
    HistoryPage,
    Join,
    Leave,
    PresenceCounts,
    Publication,
    Unsubscribed,
)
from kizuna.protocol.messages import ClientInfo, StreamPosition

__all__ = [
    "ConnectResult",
    "DisconnectPush",
    "ErrorReply",
    "Reply",
    "ServerMessage",
    "SubscribeResult",
    "decode_server_frame",
    "encode_command",
    "parse_connect_result",
    "parse_history_result",
    "parse_presence_result",
    "parse_presence_stats_result",
    "parse_publish_result",
    "parse_refresh_result",
    "parse_subscribe_result",
]

_MAX_ID = 2**53 - 1
_PREVIEW = 80  # characters of an offending line quoted in an error message

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    result: Obj


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class DisconnectPush:
    """The server ends the connection: on SSE always, on WebSocket when a node drains.

    ``delay`` (seconds, from ``delay_ms``) is the server's reconnect advice: a
    draining node spreads its clients' returns over time.
    """

    code: int
    reason: str
    reconnect: bool
    delay: float | None = None


ServerMessage: TypeAlias = (
    Reply | ErrorReply | Publication | Join | Leave | Unsubscribed | DisconnectPush
)


# --- field checks ------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(obj: Obj, name: str, where: str, *, minimum: int = 0) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MalformedFrame(f"{where}: {name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _str(obj: Obj, name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise MalformedFrame(f"{where}: {name} must be a string, got {value!r}")
    return value


def _bool(obj: Obj, name: str, where: str, default: bool | None = None) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise MalformedFrame(f"{where}: {name} must be a boolean, got {value!r}")
    return value


def _info(raw: object, where: str) -> ClientInfo:
    if not isinstance(raw, dict):
        raise MalformedFrame(f"{where}: info must be an object, got {raw!r}")
    return ClientInfo(user=_str(raw, "user", where), client=_str(raw, "client", where))


def _publication(raw: object, channel: str, epoch: str | None, where: str) -> Publication:
    if not isinstance(raw, dict):
        raise MalformedFrame(f"{where}: a publication must be an object, got {raw!r}")
    if "data" not in raw:
        raise MalformedFrame(f"{where}: publication without data")
    offset = _int(raw, "offset", where) if "offset" in raw else 0
    info = _info(raw["info"], where) if raw.get("info") is not None else None
    return Publication(channel, raw["data"], offset, epoch if offset else None, info)


def _channel(obj: Obj, where: str) -> str:
    channel = _str(obj, "channel", where)
    if not channel:
        raise MalformedFrame(f"{where}: channel must not be empty")
    return channel


# --- frames ------------------------------------------------------------------------------------


def _preview(line: bytes | str) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return repr(text[:_PREVIEW] + ("…" if len(text) > _PREVIEW else ""))


def _decode_push(obj: Obj) -> ServerMessage | None:
    kind = obj["push"]
    where = f"{kind!r} push"
    if kind == "pub":
        channel = _channel(obj, where)
        epoch = _str(obj, "epoch", where) if "epoch" in obj else None
        pub = _publication(obj, channel, epoch, where)
        if pub.offset and epoch is None:
            raise MalformedFrame(f"{where}: a publication with an offset must carry its epoch")
        return pub
    if kind == "join":
        return Join(_channel(obj, where), _info(obj.get("info"), where))
    if kind == "leave":
        return Leave(_channel(obj, where), _info(obj.get("info"), where))
    if kind == "unsubscribe":
        return Unsubscribed(
            _channel(obj, where), _int(obj, "code", where), _str(obj, "reason", where)
        )
    if kind == "disconnect":
        delay_ms = obj.get("delay_ms")
        if delay_ms is not None and (
            not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or delay_ms < 0
        ):
            raise MalformedFrame(f"{where}: delay_ms must be a non-negative integer")
        return DisconnectPush(
            _int(obj, "code", where),
            _str(obj, "reason", where),
            _bool(obj, "reconnect", where),
            delay_ms / 1000 if delay_ms is not None else None,
        )
    if not isinstance(kind, str):
        raise MalformedFrame(f"push must be a string, got {kind!r}")
    return None  # a kind from a newer server: ignored on purpose


def _decode_line(line: bytes | str) -> ServerMessage | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedFrame(f"not JSON: {_preview(line)}") from exc
    if not isinstance(obj, dict):
        raise MalformedFrame(f"not a JSON object: {_preview(line)}")
    if "push" in obj:
        return _decode_push(obj)
    if "id" not in obj:
        raise MalformedFrame(f"neither a reply (id) nor a push: {_preview(line)}")
    cid = obj["id"]
    if not _is_int(cid) or not 1 <= cid <= _MAX_ID:
        raise MalformedFrame(f"reply id must be a positive integer, got {cid!r}")
    if "error" in obj:
        error = obj["error"]
        if not isinstance(error, dict):
            raise MalformedFrame(f"reply {cid}: error must be an object, got {error!r}")
        where = f"reply {cid} error"
        return ErrorReply(cid, _int(error, "code", where), _str(error, "message", where))
    result = obj.get("result")
    if not isinstance(result, dict):
        raise MalformedFrame(f"reply {cid}: result must be an object, got {result!r}")
    return Reply(cid, result)


def decode_server_frame(frame: bytes | str) -> list[ServerMessage]:
    """Every message in one frame, in order; unknown push kinds are left out.

    Raises MalformedFrame for the first line that is not a valid message:
    after that, nothing this connection says can be trusted, so the caller
    closes it (1002) and reconnects.
    """
    lines = frame.split(b"\n") if isinstance(frame, bytes) else frame.split("\n")
    out: list[ServerMessage] = []
    for line in lines:
        if line.strip():
            message = _decode_line(line)
            if message is not None:
                out.append(message)
    return out


def encode_command(cid: int, method: str, params: Obj) -> str:
    """One command as a text frame. Raises TypeError if ``params`` is not JSON-serialisable."""
    return orjson.dumps({"id": cid, "method": method, "params": params}).decode()


# --- results of each command -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectResult:
    client: str
    version: str
    ttl: int | None
    """Seconds until the token expires; None when it does not."""


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    recoverable: bool
    position: StreamPosition | None
    recovered: bool
    publications: list[Publication]


def _ttl(result: Obj, where: str) -> int | None:
    if not _bool(result, "expires", where, default=False):
        return None
    return _int(result, "ttl", where)


def parse_connect_result(result: Obj) -> ConnectResult:
    where = "connect result"
    version = result.get("version", "")
    if not isinstance(version, str):
        raise MalformedFrame(f"{where}: version must be a string, got {version!r}")
    return ConnectResult(_str(result, "client", where), version, _ttl(result, where))


def parse_refresh_result(result: Obj) -> int | None:
    return _ttl(result, "refresh result")


def _position(result: Obj, where: str) -> StreamPosition:
    return StreamPosition(_int(result, "offset", where), _str(result, "epoch", where))


def parse_subscribe_result(result: Obj, channel: str) -> SubscribeResult:
    where = f"subscribe result for {channel!r}"
    if not _bool(result, "recoverable", where, default=False):
        return SubscribeResult(False, None, False, [])
    position = _position(result, where)
    recovered = _bool(result, "recovered", where, default=False)
    raw = result.get("publications", [])
    if not isinstance(raw, list):
        raise MalformedFrame(f"{where}: publications must be a list")
    pubs = [_publication(p, channel, position.epoch, where) for p in raw]
    previous = 0
    for pub in pubs:
        if not previous < pub.offset <= position.offset:
            raise MalformedFrame(f"{where}: recovered offsets out of order or past the top")
        previous = pub.offset
    return SubscribeResult(True, position, recovered, pubs)


def parse_publish_result(result: Obj) -> StreamPosition | None:
    if "offset" not in result:
        return None
    return _position(result, "publish result")


def parse_history_result(result: Obj, channel: str) -> HistoryPage:
    where = f"history result for {channel!r}"
    position = _position(result, where)
    raw = result.get("publications")
    if not isinstance(raw, list):
        raise MalformedFrame(f"{where}: publications must be a list")
    pubs = [_publication(p, channel, position.epoch, where) for p in raw]
    return HistoryPage(pubs, position)


def parse_presence_result(result: Obj) -> dict[str, ClientInfo]:
    where = "presence result"
    clients = result.get("clients")
    if not isinstance(clients, dict):
        raise MalformedFrame(f"{where}: clients must be an object")
    return {str(cid): _info(info, where) for cid, info in clients.items()}


def parse_presence_stats_result(result: Obj) -> PresenceCounts:
    where = "presence_stats result"
    return PresenceCounts(_int(result, "num_clients", where), _int(result, "num_users", where))
