"""The ``py-websockets-redis`` peer: ``py_websockets_server.py`` with fan-out through Redis.

What a Python developer writes to run the guide's chat server (section 5) on several
processes: the same ``websockets`` handler and JSON protocol, but a ``message`` is
PUBLISHed to Redis instead of broadcast at once, and every process relays what Redis
sends it to its own subscribers with ``websockets.broadcast()``. As in the guide's
Node.js server, each process holds one Pub/Sub connection (redis-py asyncio, with
hiredis) and subscribes a channel only while it has local subscribers to it, so a
process hears only the channels its clients follow.

Run: ``python bench/peers/py_websockets_redis_server.py --port 8765 --redis-port 6390``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from websockets.asyncio.server import ServerConnection, broadcast, serve

channels: dict[str, set[ServerConnection]] = {}


class Relay:
    """This process's two Redis clients: one to PUBLISH, one Pub/Sub connection to listen."""

    def __init__(self, redis: Redis, pubsub: PubSub) -> None:
        self.redis = redis
        self.pubsub = pubsub

    async def run(self) -> None:
        """Hand every message Redis sends to this process's subscribers of its channel."""
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                broadcast(channels.get(message["channel"], ()), message["data"])

    async def handler(self, ws: ServerConnection) -> None:
        joined: set[str] = set()
        try:
            async for raw in ws:
                data = json.loads(raw)
                kind = data.get("type")
                if kind == "subscribe":
                    channel = data["channel"]
                    if channel not in channels:
                        channels[channel] = set()
                        await self.pubsub.subscribe(channel)
                    channels[channel].add(ws)
                    joined.add(channel)
                elif kind == "message":
                    message = json.dumps(
                        {
                            "user": data.get("user"),
                            "content": data.get("content"),
                            "timestamp": int(time.time() * 1000),
                        },
                        separators=(",", ":"),
                    )
                    await self.redis.publish(data["channel"], message)
        finally:
            for channel in joined:
                subscribers = channels.get(channel)
                if subscribers is not None:
                    subscribers.discard(ws)
                    if not subscribers:
                        del channels[channel]
                        await self.pubsub.unsubscribe(channel)


async def main(host: str, port: int, redis_port: int) -> None:
    # decode_responses: the relay broadcasts str, so subscribers get text frames, as from
    # the single-process server.
    redis = Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
    pubsub = redis.pubsub()
    await pubsub.connect()  # type: ignore[no-untyped-call]
    relay = Relay(redis, pubsub)
    reader = asyncio.create_task(relay.run())
    try:
        async with serve(relay.handler, host, port, compression=None) as server:
            await server.serve_forever()
    finally:
        reader.cancel()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.host, args.port, args.redis_port))
    except ImportError:
        asyncio.run(main(args.host, args.port, args.redis_port))
