"""The Python client SDK: asyncio, typed, over the native WebSocket protocol.

::

    from kizuna.client import Client, Publication

    async with Client("ws://127.0.0.1:8000/connection/websocket", token=token) as client:
        sub = await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hello"})
        async for event in sub:
            if isinstance(event, Publication):
                print(event.data)

It reconnects with exponential backoff and full jitter, subscribes again from
the last position it delivered, and tells the application when that position
could not be recovered (:class:`Subscribed` with ``gap=True``). See
docs/clients.md. This package imports only ``kizuna.protocol`` and
``kizuna.exceptions`` from kizuna, never the server.
"""

from kizuna.client.backoff import Backoff
from kizuna.client.connection import Client, TokenCallback
from kizuna.client.errors import (
    ClientError,
    ConnectionLost,
    Disconnected,
    MalformedFrame,
    ServerRejected,
)
from kizuna.client.events import (
    ConnectionState,
    HistoryPage,
    Join,
    Leave,
    PresenceCounts,
    Publication,
    StateChange,
    Subscribed,
    SubscriptionEvent,
    Unsubscribed,
)
from kizuna.client.subscription import Handler, Subscription, SubscriptionState
from kizuna.protocol.messages import ClientInfo, StreamPosition

__all__ = [
    "Backoff",
    "Client",
    "ClientError",
    "ClientInfo",
    "ConnectionLost",
    "ConnectionState",
    "Disconnected",
    "Handler",
    "HistoryPage",
    "Join",
    "Leave",
    "MalformedFrame",
    "PresenceCounts",
    "Publication",
    "ServerRejected",
    "StateChange",
    "StreamPosition",
    "Subscribed",
    "Subscription",
    "SubscriptionEvent",
    "SubscriptionState",
    "TokenCallback",
    "Unsubscribed",
]
