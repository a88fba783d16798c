"""``POST /connection/publish``: how SSE and long-poll clients publish.

The body is ``{"channel": "...", "data": <any JSON>, "idempotency_key": "..."?}``
and the token travels as on the stream it goes with (``Authorization: Bearer``,
``?token=`` or the ``kizuna_token`` cookie). The same channel rules as a
WebSocket publish apply; the answer is ``{"result": {"offset", "epoch"}}`` or a
JSON error with its code.
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kizuna.core.node import Node
from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol.codes import ErrorCode
from kizuna.protocol.messages import ClientInfo
from kizuna.transports.common import (
    HandshakeSettings,
    check_handshake,
    error_body,
    http_status,
)

__all__ = ["publish_route"]

TRANSPORT = "http"


def _error(code: ErrorCode, message: str | None = None) -> Response:
    body = error_body(code, message or code.description)
    return Response(body, http_status(code), media_type="application/json")


def publish_route(node: Node, settings: HandshakeSettings, max_body: int) -> Route:
    async def publish(request: Request) -> Response:
        started = time.perf_counter()
        response = await _publish(node, settings, max_body, request)
        error = 0 if response.status_code == 200 else orjson.loads(response.body)["error"]["code"]
        node.events.command_handled(TRANSPORT, "publish", time.perf_counter() - started, error)
        return response

    return Route("/connection/publish", publish, methods=["POST"])


async def _publish(
    node: Node, settings: HandshakeSettings, max_body: int, request: Request
) -> Response:
    verdict = await check_handshake(node, settings, request.scope, TRANSPORT)
    if verdict.error is not None:
        return _error(verdict.error.code, verdict.error.message)
    if verdict.credentials is None and not node.anonymous_allowed:
        return _error(ErrorCode.UNAUTHORIZED, "token required")
    body = await request.body()
    if len(body) > max_body:
        return _error(ErrorCode.MESSAGE_TOO_LARGE)
    try:
        params = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error(ErrorCode.BAD_REQUEST, "body is not valid JSON")
    if not isinstance(params, dict):
        return _error(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    channel, key = params.get("channel"), params.get("idempotency_key")
    if not isinstance(channel, str) or not channel or "data" not in params:
        return _error(ErrorCode.BAD_REQUEST, "channel (string) and data are required")
    if key is not None and not isinstance(key, str):
        return _error(ErrorCode.BAD_REQUEST, "idempotency_key must be a string")
    try:
        options = node.rules.check_publish(channel, verdict.credentials)
        position = await node.publish(
            channel,
            orjson.dumps(params["data"]),
            info=ClientInfo(verdict.credentials.user if verdict.credentials else "", ""),
            idempotency_key=key,
            options=options,
        )
    except ProtocolError as exc:
        return _error(exc.code, exc.message)
    except BrokerError:
        return _error(ErrorCode.BROKER_UNAVAILABLE)
    result = {"offset": position.offset, "epoch": position.epoch} if position.offset else {}
    return Response(orjson.dumps({"result": result}), media_type="application/json")
