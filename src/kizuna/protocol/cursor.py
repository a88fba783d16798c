"""Cursors: where a stateless reader (SSE, long-poll) stands in each of its channels.

A cursor maps channels to stream positions and travels as an opaque,
URL-safe string — the SSE ``id:`` field (echoed back by browsers as
``Last-Event-ID``) and the long-poll ``cursor`` parameter. Because the cursor
carries all the state, a client may send its next request to any node.

Wire form: base64url (no padding) of the compact JSON ``[[channel, offset, epoch], ...]``.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from kizuna.exceptions import ProtocolError
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.messages import StreamPosition

__all__ = ["MAX_CURSOR_LENGTH", "decode_cursor", "encode_cursor"]

MAX_CURSOR_LENGTH = 8192
"""Longest cursor accepted, in characters."""


def encode_cursor(positions: dict[str, StreamPosition]) -> str:
    rows = [[channel, pos.offset, pos.epoch] for channel, pos in positions.items()]
    return base64.urlsafe_b64encode(orjson.dumps(rows)).rstrip(b"=").decode()


def decode_cursor(text: str) -> dict[str, StreamPosition]:
    """Parse a cursor; raises ProtocolError (107 bad request) for anything malformed."""
    if not text:
        return {}
    if len(text) > MAX_CURSOR_LENGTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "cursor too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        rows = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed cursor") from exc
    if not isinstance(rows, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed cursor")
    out: dict[str, StreamPosition] = {}
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not isinstance(row[0], str)
            or not isinstance(row[1], int)
            or isinstance(row[1], bool)
            or row[1] < 0
            or not isinstance(row[2], str)
        ):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "malformed cursor")
        out[row[0]] = StreamPosition(row[1], row[2])
    return out
