"""Long-polling and polling: ``GET /connection/poll?channels=…&cursor=…&timeout=25``.

Each request is answered from channel history after the cursor it carries,
so the server keeps no per-client state and a client may poll any node:

1. Validate the query (107 for malformed channels, cursor or timeout) and the
   token and Origin (the same rules as every handshake), and check read access
   to every channel. Long-polling reads history, so every channel's namespace
   must keep some (108 otherwise).
2. Listen on the channels, then read what follows the cursor. Anything there,
   or a gap, is answered at once.
3. Otherwise wait until something is published or ``timeout`` seconds pass
   (``timeout=0`` is plain polling), and read again.

The answer: ``{"publications": [pub pushes…], "cursor": "…", "gaps": [channels]}``.
Each publication has the same JSON form as a ``pub`` push on WebSocket.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kizuna.core.node import Node
from kizuna.core.reader import listen, read_since
from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.cursor import decode_cursor, encode_cursor
from kizuna.protocol.handshake import parse_query
from kizuna.transports.common import (
    HandshakeSettings,
    anonymous_refused,
    channels_param,
    check_handshake,
    error_body,
    http_status,
)

__all__ = ["DEFAULT_TIMEOUT", "MAX_TIMEOUT", "longpoll_route"]

DEFAULT_TIMEOUT = 25.0
MAX_TIMEOUT = 60.0
TRANSPORT = "longpoll"


def _timeout(values: list[str]) -> float:
    if not values:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(values[0])
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "timeout must be a number") from exc
    if not 0 <= timeout <= MAX_TIMEOUT:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"timeout must be within 0..{MAX_TIMEOUT:g}")
    return timeout


async def _wait(
    published: asyncio.Event, stopping: asyncio.Event, request: Request, timeout: float
) -> bool:
    """Hold the poll until a publication (True), or until the timeout, the client
    leaving or the node draining (False: answer now with the cursor as it is)."""

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waits = [
        asyncio.ensure_future(published.wait()),
        asyncio.ensure_future(stopping.wait()),
        asyncio.ensure_future(client_gone()),
    ]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    return published.is_set()


def _error(exc: ProtocolError) -> Response:
    body = error_body(exc.code, exc.message)
    return Response(body, http_status(exc.code), media_type="application/json")


def longpoll_route(node: Node, settings: HandshakeSettings) -> Route:
    async def poll(request: Request) -> Response:
        started = time.perf_counter()
        error = 0
        try:
            return await _poll(node, settings, request)
        except ProtocolError as exc:
            error = exc.code
            return _error(exc)
        except BrokerError:
            error = ErrorCode.BROKER_UNAVAILABLE
            return _error(ProtocolError(ErrorCode.BROKER_UNAVAILABLE))
        finally:
            node.events.command_handled(TRANSPORT, "poll", time.perf_counter() - started, error)

    return Route("/connection/poll", poll, methods=["GET"])


async def _poll(node: Node, settings: HandshakeSettings, request: Request) -> Response:
    query = parse_query(request.scope.get("query_string", b""))
    channels = channels_param(query)
    cursor = decode_cursor(query.get("cursor", [""])[0])
    timeout = _timeout(query.get("timeout", []))
    verdict = await check_handshake(node, settings, request.scope, TRANSPORT)
    if verdict.error is not None:
        raise verdict.error
    refused = anonymous_refused(node, verdict)
    if refused is not None:
        raise refused
    for channel in channels:
        if not node.rules.check_read(channel, verdict.credentials).recoverable:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE, f"{channel}: no history to poll")

    limit = node.options.history_max_limit
    if timeout == 0:  # plain polling: no need to listen
        result = await read_since(node, channels, cursor, limit)
    else:
        async with listen(node, channels) as published:
            result = await read_since(node, channels, cursor, limit)
            if not result.publications and not result.gaps:
                woken = await _wait(published, node.stopping, request, timeout)
                if woken:
                    result = await read_since(node, channels, result.positions, limit)

    pubs = [
        orjson.Fragment(
            codec.encode_publication_push(channel, pub, result.positions[channel].epoch)
        )
        for channel, pub in result.publications
    ]
    body = {"publications": pubs, "cursor": encode_cursor(result.positions), "gaps": result.gaps}
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
