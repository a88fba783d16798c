"""The server HTTP API under ``/api/``, for backends that publish and manage.

Every call is ``POST /api/<method>`` with a JSON object body and the API key
in ``Authorization: apikey <key>`` (or ``X-API-Key``). Answers are JSON:
``{"result": {...}}`` or ``{"error": {"code": N, "message": "..."}}`` with an
HTTP status that matches the code (400, 401, 403, 404, 413, 503).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kizuna.core.node import Node
from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.protocol.messages import StreamPosition
from kizuna.transports.common import error_body, http_status

__all__ = ["api_routes", "error_response", "json_response"]

Params = dict[str, Any]
Method = Callable[[Node, Params], Awaitable[dict[str, Any]]]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def error_response(code: ErrorCode, message: str | None = None) -> Response:
    body = error_body(code, message or code.description)
    return Response(body, http_status(code), media_type="application/json")


def _require_str(params: Params, name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be a non-empty string")
    return value


def _require_data(params: Params) -> bytes:
    if "data" not in params:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "data is required")
    return orjson.dumps(params["data"])


def _position(params: Params) -> StreamPosition | None:
    since = params.get("since")
    if since is None:
        return None
    offset = since.get("offset") if isinstance(since, dict) else None
    epoch = since.get("epoch") if isinstance(since, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "since.offset must be a non-negative integer")
    if not isinstance(epoch, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "since.epoch must be a string")
    return StreamPosition(offset, epoch)


async def _publish(node: Node, params: Params) -> dict[str, Any]:
    channel = _require_str(params, "channel")
    key = params.get("idempotency_key")
    position = await node.publish(
        channel, _require_data(params), idempotency_key=key if isinstance(key, str) else None
    )
    return {"offset": position.offset, "epoch": position.epoch} if position.offset else {}


async def _broadcast(node: Node, params: Params) -> dict[str, Any]:
    channels = params.get("channels")
    if (
        not isinstance(channels, list)
        or not channels
        or not all(isinstance(c, str) and c for c in channels)
    ):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "channels must be a non-empty list of strings")
    data = _require_data(params)
    for channel in channels:
        node.rules.options(channel)  # every channel must exist before anything is published
    results = []
    for channel in channels:
        position = await node.publish(channel, data)
        results.append({"offset": position.offset, "epoch": position.epoch})
    return {"responses": results}


async def _history(node: Node, params: Params) -> dict[str, Any]:
    channel = _require_str(params, "channel")
    if not node.rules.options(channel).recoverable:
        raise ProtocolError(ErrorCode.NOT_AVAILABLE, "history is off in this namespace")
    limit = params.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "limit must be a non-negative integer")
    return await node.history(channel, limit, _position(params), bool(params.get("reverse")))


async def _presence(node: Node, params: Params) -> dict[str, Any]:
    channel = _require_str(params, "channel")
    node.rules.options(channel)
    return await node.presence(channel)


async def _presence_stats(node: Node, params: Params) -> dict[str, Any]:
    channel = _require_str(params, "channel")
    node.rules.options(channel)
    return await node.presence_stats(channel)


async def _channels(node: Node, params: Params) -> dict[str, Any]:
    return {
        "channels": {
            ch: {"num_clients": node.hub.subscriber_count(ch)} for ch in node.hub.channels()
        }
    }


async def _disconnect(node: Node, params: Params) -> dict[str, Any]:
    user = _require_str(params, "user")
    return {"disconnected": await node.disconnect_user(user, DisconnectCode.FORBIDDEN)}


METHODS: dict[str, Method] = {
    "publish": _publish,
    "broadcast": _broadcast,
    "history": _history,
    "presence": _presence,
    "presence_stats": _presence_stats,
    "channels": _channels,
    "disconnect": _disconnect,
}


def api_routes(node: Node, api_key: str, max_body: int) -> list[Route]:
    async def endpoint(request: Request) -> Response:
        given = request.headers.get("x-api-key") or ""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "apikey":
            given = value.strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return error_response(ErrorCode.UNAUTHORIZED, "missing or wrong API key")
        method = METHODS.get(request.path_params["method"])
        if method is None:
            return error_response(ErrorCode.METHOD_NOT_FOUND)
        body = await request.body()
        if len(body) > max_body:
            return error_response(ErrorCode.MESSAGE_TOO_LARGE)
        try:
            params = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            return error_response(ErrorCode.BAD_REQUEST, "body is not valid JSON")
        if not isinstance(params, dict):
            return error_response(ErrorCode.BAD_REQUEST, "body must be a JSON object")
        try:
            result = await method(node, params)
        except ProtocolError as exc:
            return error_response(exc.code, exc.message)
        except BrokerError:
            return error_response(ErrorCode.BROKER_UNAVAILABLE)
        return json_response({"result": result})

    return [Route("/api/{method}", endpoint, methods=["POST"])]
