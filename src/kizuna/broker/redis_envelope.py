"""The bytes the Redis broker puts on Pub/Sub and in Streams, and how they are read back.

One envelope carries everything a delivering node needs, so a publication is
decoded once per node and never looked up again::

    [<offset>,"<epoch>",<published_at>,<user>,<client>,<traceparent>]\\n<data>

The first line is a JSON array (``user``, ``client`` and ``traceparent`` may
be ``null``); everything after the first newline is the publication's data,
untouched. JSON never holds a raw newline, so the first ``\\n`` always ends the
header, whatever the data contains.

Why this shape: the offset and epoch are only known inside the publish script
(they are assigned atomically with the XADD), so the script must be able to
*prepend* them without parsing anything. The client sends the tail
(``<published_at>,...]\\n<data>``) and the script concatenates
``"[" .. offset .. ',"' .. epoch .. '",' .. tail``. The very same bytes are
stored in the stream and published, so history and live delivery share one
decoder.

The first byte names the kind, which leaves room for later versions:
``[`` a publication, ``+`` a join, ``-`` a leave (``+``/``-`` are followed by a
JSON ``[user, client]``).
"""

from __future__ import annotations

import orjson

from kizuna.protocol.messages import ClientInfo, Publication

__all__ = [
    "JOIN",
    "LEAVE",
    "PUBLICATION",
    "EnvelopeError",
    "decode_info",
    "decode_publication",
    "encode_info",
    "encode_tail",
    "unhistoried",
]

PUBLICATION = 0x5B  # "["
JOIN = 0x2B  # "+"
LEAVE = 0x2D  # "-"


class EnvelopeError(ValueError):
    """Bytes on a kizuna channel that are not a kizuna envelope (another writer, or a bug)."""


def encode_tail(pub: Publication) -> bytes:
    """Everything after the epoch: ``<published_at>,<user>,<client>,<traceparent>]\\n<data>``."""
    info = pub.info
    head = orjson.dumps(
        [
            pub.published_at,
            info.user if info is not None else None,
            info.client if info is not None else None,
            pub.traceparent,
        ]
    )
    return b"".join((head[1:], b"\n", pub.data))


def unhistoried(tail: bytes) -> bytes:
    """The envelope of a publication without history: offset 0, no epoch."""
    return b'[0,"",' + tail


def decode_publication(raw: bytes) -> tuple[Publication, str]:
    """The publication in ``raw`` and the epoch it was published in."""
    end = raw.find(b"\n")
    try:
        if end < 0:
            raise ValueError("no end of header")
        offset, epoch, published_at, user, client, traceparent = orjson.loads(raw[:end])
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise EnvelopeError(f"not a kizuna publication envelope: {raw[:60]!r}") from exc
    info = ClientInfo(user, client) if client is not None else None
    return Publication(raw[end + 1 :], offset, info, published_at, traceparent), epoch


def encode_info(kind: int, info: ClientInfo) -> bytes:
    """A join (``JOIN``) or leave (``LEAVE``) envelope."""
    return bytes((kind,)) + orjson.dumps([info.user, info.client])


def decode_info(raw: bytes) -> ClientInfo:
    try:
        user, client = orjson.loads(memoryview(raw)[1:])
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise EnvelopeError(f"not a kizuna join/leave envelope: {raw[:60]!r}") from exc
    return ClientInfo(user, client)
