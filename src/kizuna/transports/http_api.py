"""The server HTTP API under ``/api/``, for backends that publish and manage.

Every call is ``POST /api/<method>`` with a JSON object body and the API key
in ``Authorization: apikey <key>`` (or ``X-API-Key``). Answers are JSON:
``{"result": {...}}`` or ``{"error": {"code": N, "message": "..."}}`` with an
HTTP status that matches the code (400, 401, 403, 404, 413, 503).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kizuna.core.node import Node
from kizuna.exceptions import BrokerError, ProtocolError
from kizuna.protocol import codec
from kizuna.protocol.codes import DisconnectCode, ErrorCode
from kizuna.protocol.messages import History, Presence, PresenceStats, Publish
from kizuna.transports.common import error_body, http_status

__all__ = ["api_routes", "error_response", "json_response"]

REVOCATION_TTL = 24 * 3600.0
"""How long a revocation lasts when the call gives no ``until``: longer than tokens live."""

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


def _command(method: str, params: Params) -> Any:
    return codec.parse_params(method, params)


async def _publish(node: Node, params: Params) -> dict[str, Any]:
    cmd: Publish = _command("publish", params)
    position = await node.publish(cmd.channel, cmd.data, idempotency_key=cmd.idempotency_key)
    return {"offset": position.offset, "epoch": position.epoch} if position.offset else {}


async def _broadcast(node: Node, params: Params) -> dict[str, Any]:
    channels = params.get("channels")
    if not isinstance(channels, list) or not channels:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "channels must be a non-empty list")
    # Every channel is checked before anything is published: all or nothing.
    commands: list[Publish] = [
        _command("publish", {"channel": channel, "data": params.get("data")})
        for channel in channels
    ]
    if "data" not in params:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "data is required")
    for cmd in commands:
        node.rules.options(cmd.channel)
    results = []
    for cmd in commands:
        position = await node.publish(cmd.channel, cmd.data)
        results.append({"offset": position.offset, "epoch": position.epoch})
    return {"responses": results}


async def _history(node: Node, params: Params) -> dict[str, Any]:
    cmd: History = _command("history", params)
    if not node.rules.options(cmd.channel).recoverable:
        raise ProtocolError(ErrorCode.NOT_AVAILABLE, "history is off in this namespace")
    return await node.history(cmd.channel, cmd.limit, cmd.since, cmd.reverse)


async def _presence(node: Node, params: Params) -> dict[str, Any]:
    cmd: Presence = _command("presence", params)
    node.rules.options(cmd.channel)
    return await node.presence(cmd.channel)


async def _presence_stats(node: Node, params: Params) -> dict[str, Any]:
    cmd: PresenceStats = _command("presence_stats", params)
    node.rules.options(cmd.channel)
    return await node.presence_stats(cmd.channel)


async def _channels(node: Node, params: Params) -> dict[str, Any]:
    return {
        "channels": {
            ch: {"num_clients": node.hub.subscriber_count(ch)} for ch in node.hub.channels()
        }
    }


async def _disconnect(node: Node, params: Params) -> dict[str, Any]:
    user = _require_str(params, "user")
    return {"disconnected": await node.disconnect_user(user, DisconnectCode.FORBIDDEN)}


def _time(params: Params, name: str, default: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be a Unix time in seconds")
    return float(value)


async def _revoke_token(node: Node, params: Params) -> dict[str, Any]:
    jti = _require_str(params, "jti")
    await node.revoke_token(jti, _time(params, "until", time.time() + REVOCATION_TTL))
    return {}


async def _revoke_user(node: Node, params: Params) -> dict[str, Any]:
    user = _require_str(params, "user")
    now = time.time()
    before = _time(params, "before", now)
    await node.revoke_user(user, before, _time(params, "until", now + REVOCATION_TTL))
    return {}


METHODS: dict[str, Method] = {
    "revoke_token": _revoke_token,
    "revoke_user": _revoke_user,
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
