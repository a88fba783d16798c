"""Socket.IO packets for kizuna's channel traffic, each encoded once per node.

A Socket.IO room is a kizuna channel: room ``r`` of Socket.IO namespace ``/chat``
is channel ``chat:r``. What the node fans out to a channel's local subscribers
is the native push (``{"push": "pub", "channel": "chat:r", "data": ...}``), the
same bytes object for every subscriber (see core/hub.py). This module turns
such a push into the Engine.IO packet a Socket.IO member reads:

=========================  ==============================================
native push                Socket.IO event (namespace from the channel)
=========================  ==============================================
``pub``                    ``newMessage(data, {room, offset?})``
``join``                   ``userJoined({userId, room})``
``leave``                  ``userLeft({userId, room})``
anything else              nothing (replies, pushes Socket.IO has no word for)
=========================  ==============================================

:class:`PushTranslator` remembers the last push it translated, by identity:
the hub hands the same bytes to every member of a room in one loop, so the
first member pays for the JSON work and the others get the same
``engineio.packet.Packet`` object, whose own ``encode_cache`` then holds the
wire text and whose :attr:`WirePacket.wire` holds it as UTF-8 bytes, ready for
a WebSocket text frame (socketio_websocket.py). One JSON decode and one encode
per publication per node, however many members the room has.

Wire form (Socket.IO protocol v5 over Engine.IO v4): ``4`` (Engine.IO
MESSAGE) + ``2`` (Socket.IO EVENT) + ``/chat,`` (namespace, omitted for
``/``) + the JSON array ``[event, *args]``. :func:`encode_event` writes the
Socket.IO part with orjson; tests check that python-socketio's own
``socketio.packet.Packet`` decodes it to the same packet.
"""

from __future__ import annotations

from typing import Any

import orjson
from engineio import packet as eio_packet  # type: ignore[import-untyped]

from kizuna.core.channels import NAMESPACE_SEPARATOR, namespace_of
from kizuna.protocol.codec import MAX_CHANNEL_LENGTH
from kizuna.protocol.codes import ErrorCode

__all__ = [
    "NEW_MESSAGE",
    "SERVER_DISCONNECT",
    "USER_JOINED",
    "USER_LEFT",
    "DroppablePacket",
    "PushTranslator",
    "WirePacket",
    "encode_event",
    "error_ack",
    "event_packet",
    "kizuna_namespace",
    "room_channel",
    "socketio_namespace",
    "translate_push",
]

NEW_MESSAGE = "newMessage"
USER_JOINED = "userJoined"
USER_LEFT = "userLeft"
SERVER_DISCONNECT = "serverDisconnect"
"""Sent just before the server ends a namespace connection: ``{code, reason, reconnect}``."""

EioPacket = Any
"""``engineio.packet.Packet`` (the library ships no type information)."""


def socketio_namespace(kizuna_ns: str) -> str:
    """kizuna namespace ``chat`` → Socket.IO namespace ``/chat``."""
    return "/" + kizuna_ns


def kizuna_namespace(sio_ns: str) -> str:
    """Socket.IO namespace ``/chat`` → kizuna namespace ``chat``."""
    return sio_ns.lstrip("/")


def room_channel(sio_ns: str, room: str) -> str | None:
    """The channel of ``room`` in Socket.IO namespace ``sio_ns``; None if it cannot be one."""
    if not room:
        return None
    ns = kizuna_namespace(sio_ns)
    channel = ns + NAMESPACE_SEPARATOR + room if ns else room  # "" is the namespace of "name"
    return channel if len(channel) <= MAX_CHANNEL_LENGTH else None


def encode_event(namespace: str, event: str, *args: Any) -> str:
    """The text of a Socket.IO EVENT packet (no ack id): ``2/ns,["event",...]``."""
    prefix = "2" if namespace == "/" else f"2{namespace},"
    return prefix + orjson.dumps([event, *args]).decode()


class WirePacket(eio_packet.Packet):  # type: ignore[misc]
    """An Engine.IO MESSAGE shared by many sockets, its wire form made once for all of them.

    ``encode_cache`` (python-engineio's) holds the text its writer and long-polls
    send; :attr:`wire` holds the same text as UTF-8, the payload of the WebSocket
    text frame kizuna writes itself, so no recipient encodes it again.
    """

    def __init__(self, text: str) -> None:
        super().__init__(eio_packet.MESSAGE, text)
        self.wire: bytes = self.encode().encode()


class DroppablePacket(WirePacket):
    """A publication of a drop-oldest namespace: a full outbox may shed it (see Outbox.shed)."""


def event_packet(namespace: str, event: str, *args: Any, droppable: bool = False) -> EioPacket:
    """An Engine.IO MESSAGE carrying one Socket.IO event, with its wire text already made."""
    kind = DroppablePacket if droppable else WirePacket
    return kind(encode_event(namespace, event, *args))


def error_ack(code: ErrorCode, message: str | None = None) -> dict[str, Any]:
    """What an event's acknowledgement carries when it failed: kizuna's numbered code."""
    return {"ok": False, "error": {"code": int(code), "message": message or code.description}}


def _user(info: Any) -> str:
    if not isinstance(info, dict):
        return ""
    user = info.get("user") or info.get("client") or ""
    return user if isinstance(user, str) else ""


def translate_push(data: bytes | memoryview) -> EioPacket | None:
    """The Engine.IO packet for one native push, or None if Socket.IO members get nothing.

    A memoryview is how the hub marks a publication that may be dropped (a
    drop-oldest namespace); its packet is a :class:`DroppablePacket`.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    channel = message.get("channel")
    if not isinstance(channel, str):
        return None
    ns = namespace_of(channel)
    room = channel[len(ns) + 1 :] if ns else channel
    namespace = socketio_namespace(ns)
    kind = message.get("push")
    if kind == "pub":
        meta: dict[str, Any] = {"room": room}
        offset = message.get("offset")
        if offset:
            meta["offset"] = offset
        droppable = type(data) is memoryview
        return event_packet(namespace, NEW_MESSAGE, message.get("data"), meta, droppable=droppable)
    if kind == "join":
        return event_packet(
            namespace, USER_JOINED, {"userId": _user(message.get("info")), "room": room}
        )
    if kind == "leave":
        return event_packet(
            namespace, USER_LEFT, {"userId": _user(message.get("info")), "room": room}
        )
    return None


class PushTranslator:
    """:func:`translate_push` with a one-entry cache keyed by the identity of the push.

    Keeping a reference to the last push makes identity a safe key: the object
    cannot be freed and its id reused while it is cached.
    """

    __slots__ = ("_last_in", "_last_out")

    def __init__(self) -> None:
        self._last_in: bytes | memoryview | None = None
        self._last_out: EioPacket | None = None

    def translate(self, data: bytes | memoryview) -> EioPacket | None:
        if data is self._last_in:
            return self._last_out
        out = translate_push(data)
        self._last_in = data
        self._last_out = out
        return out
