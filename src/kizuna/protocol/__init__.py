"""The native protocol, sans-I/O: commands, replies, pushes, codes and the codec.

Nothing here imports asyncio, a web framework or a broker; every function is
bytes in, objects out (or the reverse) and is tested without an event loop.
"""

from kizuna.protocol.codec import decode_frame, join_frame
from kizuna.protocol.codes import DisconnectCode, ErrorCode, reconnect_allowed
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
    "ClientInfo",
    "Command",
    "CommandRejected",
    "Connect",
    "DisconnectCode",
    "ErrorCode",
    "History",
    "Ping",
    "Presence",
    "PresenceStats",
    "Publication",
    "Publish",
    "Refresh",
    "StreamPosition",
    "Subscribe",
    "Unsubscribe",
    "decode_frame",
    "join_frame",
    "reconnect_allowed",
]
